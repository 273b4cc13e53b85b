//! REDCap's API as the gateway must understand it: PHP's body parser, the call model,
//! multipart handling and REDCap-shaped error bodies.

pub mod call;
pub mod dag_filter;
pub mod error_body;
pub mod logic;
pub mod metadata;
pub mod multipart;
pub mod php_form;
pub mod rights;
pub mod user_data;

pub use call::{CallError, Operation, RedcapCall};
pub use error_body::ReturnFormat;
pub use php_form::{FormError, PhpLimits};
pub use rights::{ExportLevel, ExportRights};
