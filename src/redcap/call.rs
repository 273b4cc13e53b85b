//! `RedcapCall`: what a request asks REDCap to do, decided exactly as REDCap decides it.

use super::error_body::ReturnFormat;
use super::php_form::{ParsedForm, PhpArray, PhpValue};
use bytes::Bytes;

/// REDCap's `content` whitelist (API/index.php). Anything else is rejected upstream.
pub const CONTENTS: &[&str] = &[
    "arm",
    "attachment",
    "dag",
    "event",
    "exportFieldNames",
    "file",
    "fileInfo",
    "fileRepository",
    "formEventMapping",
    "generateNextRecordName",
    "instrument",
    "log",
    "metadata",
    "participantList",
    "pdf",
    "project",
    "project_settings",
    "project_xml",
    "record",
    "repeatingFormsEvents",
    "report",
    "surveyAccessCode",
    "surveyLink",
    "surveyQueueLink",
    "surveyReturnCode",
    "tableau",
    "user",
    "userDagMapping",
    "userRole",
    "userRoleMapping",
    "version",
    "mycap",
];

/// The parameters that decide what a call does: never guessed when ambiguous.
pub const DECIDING_PARAMS: &[&str] = &[
    "token",
    "content",
    "action",
    "format",
    "returnFormat",
    "data",
];

/// What the call does, in the `content:action` words the policy uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    Export,
    Import,
    Delete,
    Rename,
    Randomize,
    Switch,
    /// `file` and `fileRepository` actions such as `createFolder` and `list`.
    Other(&'static str),
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Export => "export",
            Operation::Import => "import",
            Operation::Delete => "delete",
            Operation::Rename => "rename",
            Operation::Randomize => "randomize",
            Operation::Switch => "switch",
            Operation::Other(s) => s,
        }
    }

    /// True for calls that change data, users or rights in REDCap.
    pub fn is_mutating(self) -> bool {
        !matches!(self, Operation::Export | Operation::Other("list"))
    }
}

/// A REDCap API call as REDCap will read it.
#[derive(Debug, Clone)]
pub struct RedcapCall {
    /// The entry of `CONTENTS` the body named.
    pub content: &'static str,
    /// The `action` parameter as sent (case-sensitive), if any.
    pub action: Option<String>,
    pub operation: Operation,
    pub format: ReturnFormat,
    pub return_format: ReturnFormat,
    /// Raw `data` parameter (records or users), shared with the parsed body (not a
    /// copy); read by policy, never logged.
    pub data: Option<Bytes>,
    /// `users[...]` values for `content=user&action=delete`, in PHP's order.
    pub users: Vec<String>,
    /// True when the client put a `token` field in the body.
    pub has_token_field: bool,
    /// The token field's value (a placeholder or a personal token); never logged.
    pub token_field: Option<Bytes>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("the parameter \"{0}\" appears more than once; send it exactly once")]
    Duplicate(&'static str),
    #[error("the parameter \"{0}\" must be a single value, not an array")]
    ArrayForm(&'static str),
    #[error("the parameter \"content\" is missing")]
    MissingContent,
    #[error("the value of the parameter \"content\" is not valid")]
    UnknownContent,
    #[error("the value of the parameter \"{0}\" is not valid UTF-8")]
    NotUtf8(&'static str),
    #[error("the value of the parameter \"action\" is not valid for content \"{0}\"")]
    UnknownAction(String),
    #[error("the parameter \"users\" must be an array of usernames (users[]=name)")]
    UsersNotArray,
    #[error("the parameter \"users\" must be a flat array of usernames")]
    UsersNested,
}

fn scalar<'a>(form: &'a ParsedForm, name: &'static str) -> Result<Option<&'a Bytes>, CallError> {
    let (count, any_array) = form.occurrences(name);
    if any_array {
        return Err(CallError::ArrayForm(name));
    }
    if count > 1 {
        return Err(CallError::Duplicate(name));
    }
    Ok(match form.post.get_str(name) {
        Some(PhpValue::Str(v)) => Some(v),
        _ => None,
    })
}

fn utf8(v: &[u8], name: &'static str) -> Result<String, CallError> {
    String::from_utf8(v.to_vec()).map_err(|_| CallError::NotUtf8(name))
}

/// The error format for a body, read leniently (used for errors before a full parse).
pub fn sniff_return_format(form: &ParsedForm) -> ReturnFormat {
    let get = |n: &str| match form.post.get_str(n) {
        Some(PhpValue::Str(v)) => Some(v),
        _ => None,
    };
    match get("returnFormat").or_else(|| get("format")) {
        Some(v) => ReturnFormat::from_param(v),
        None => ReturnFormat::Xml,
    }
}

impl RedcapCall {
    /// Builds the call from `$_POST`, rejecting every ambiguous form of a deciding field.
    pub fn from_form(form: &ParsedForm) -> Result<RedcapCall, CallError> {
        // Check every deciding parameter for duplicates/arrays before anything else.
        let mut values: [Option<&Bytes>; 6] = [None; 6];
        for (slot, name) in values.iter_mut().zip(DECIDING_PARAMS) {
            *slot = scalar(form, name)?;
        }
        let [token, content, action, format, return_format, data] = values;

        let format = format.map_or(ReturnFormat::Xml, |v| ReturnFormat::from_param(v));
        let return_format = return_format.map_or(format, |v| ReturnFormat::from_param(v));
        let content = std::str::from_utf8(content.ok_or(CallError::MissingContent)?)
            .map_err(|_| CallError::NotUtf8("content"))?;
        let content = CONTENTS
            .iter()
            .copied()
            .find(|c| *c == content)
            .ok_or(CallError::UnknownContent)?;
        let action = action.map(|a| utf8(a, "action")).transpose()?;
        let operation = decide_operation(content, action.as_deref(), data.is_some())?;
        let users = if content == "user" && operation == Operation::Delete {
            users_array(&form.post)?
        } else {
            Vec::new()
        };
        Ok(RedcapCall {
            content,
            action,
            operation,
            format,
            return_format,
            data: data.cloned(),
            users,
            has_token_field: token.is_some(),
            token_field: token.cloned(),
        })
    }

    /// `content:operation`, the name grants are written in.
    pub fn permission(&self) -> String {
        format!("{}:{}", self.content, self.operation.as_str())
    }
}

/// REDCap's own rules for deciding import vs export vs delete (REDCAP.md).
pub fn decide_operation(
    content: &str,
    action: Option<&str>,
    has_data: bool,
) -> Result<Operation, CallError> {
    let action_or_empty = action.unwrap_or("");
    let unknown = || CallError::UnknownAction(content.to_string());
    Ok(match content {
        // `data` present and not delete: import, even with action=export.
        "user" | "userRole" | "userRoleMapping" => match action_or_empty {
            "delete" => Operation::Delete,
            _ if has_data => Operation::Import,
            _ => Operation::Export,
        },
        "userDagMapping" => {
            if has_data {
                Operation::Import
            } else {
                Operation::Export
            }
        }
        "dag" => match action_or_empty {
            "" | "export" => Operation::Export,
            "import" => Operation::Import,
            "delete" => Operation::Delete,
            "switch" => Operation::Switch,
            _ => return Err(unknown()),
        },
        "record" => match action_or_empty {
            "delete" => Operation::Delete,
            "rename" => Operation::Rename,
            "randomize" => Operation::Randomize,
            _ if has_data => Operation::Import,
            _ => Operation::Export,
        },
        "file" => match action_or_empty {
            "export" => Operation::Export,
            "import" => Operation::Import,
            "delete" => Operation::Delete,
            _ => return Err(unknown()),
        },
        "fileRepository" => match action_or_empty {
            "export" => Operation::Export,
            "import" => Operation::Import,
            "delete" => Operation::Delete,
            "list" => Operation::Other("list"),
            "createFolder" => Operation::Other("createFolder"),
            _ => return Err(unknown()),
        },
        "arm"
        | "event"
        | "metadata"
        | "repeatingFormsEvents"
        | "instrument"
        | "formEventMapping"
        | "project"
        | "project_settings" => match action_or_empty {
            "delete" => Operation::Delete,
            "import" => Operation::Import,
            _ if has_data => Operation::Import,
            _ => Operation::Export,
        },
        "surveyAccessCode"
        | "generateNextRecordName"
        | "version"
        | "exportFieldNames"
        | "project_xml"
        | "report"
        | "log"
        | "pdf"
        | "surveyLink"
        | "surveyQueueLink"
        | "surveyReturnCode"
        | "participantList"
        | "attachment"
        | "fileInfo"
        | "tableau"
        | "mycap" => {
            if has_data {
                Operation::Import
            } else {
                Operation::Export
            }
        }
        _ => return Err(CallError::UnknownContent),
    })
}

/// `users[...]` as REDCap iterates it: the values of a flat PHP array.
fn users_array(post: &PhpArray) -> Result<Vec<String>, CallError> {
    match post.get_str("users") {
        None => Ok(Vec::new()),
        Some(PhpValue::Str(_)) => Err(CallError::UsersNotArray),
        Some(PhpValue::Array(arr)) => arr
            .iter()
            .map(|(_, v)| match v {
                PhpValue::Str(s) => utf8(s, "users"),
                PhpValue::Array(_) => Err(CallError::UsersNested),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redcap::php_form::{parse_urlencoded, PhpLimits};

    fn call(body: &str) -> Result<RedcapCall, CallError> {
        RedcapCall::from_form(&parse_urlencoded(body.as_bytes(), PhpLimits::default()).unwrap())
    }

    #[test]
    fn user_with_data_is_import_even_with_action_export() {
        let c = call("content=user&action=export&data=%5B%5D").unwrap();
        assert_eq!(c.operation, Operation::Import);
        assert_eq!(call("content=user").unwrap().operation, Operation::Export);
        let c = call("content=user&action=delete&data=x&users[]=a").unwrap();
        assert_eq!(c.operation, Operation::Delete);
    }

    #[test]
    fn user_role_and_mapping_follow_user_rules() {
        for content in ["userRole", "userRoleMapping"] {
            let c = call(&format!("content={content}&action=export&data=x")).unwrap();
            assert_eq!(c.operation, Operation::Import, "{content}");
        }
    }

    #[test]
    fn user_dag_mapping_import_iff_data() {
        assert_eq!(
            call("content=userDagMapping&data=x").unwrap().operation,
            Operation::Import
        );
        assert_eq!(
            call("content=userDagMapping&action=import")
                .unwrap()
                .operation,
            Operation::Export
        );
    }

    #[test]
    fn dag_actions() {
        assert_eq!(call("content=dag").unwrap().operation, Operation::Export);
        assert_eq!(
            call("content=dag&action=switch&dag=x").unwrap().operation,
            Operation::Switch
        );
        assert_eq!(
            call("content=dag&action=delete").unwrap().operation,
            Operation::Delete
        );
        assert!(matches!(
            call("content=dag&action=Switch"),
            Err(CallError::UnknownAction(_))
        ));
    }

    #[test]
    fn record_actions() {
        assert_eq!(call("content=record").unwrap().operation, Operation::Export);
        assert_eq!(
            call("content=record&data=x").unwrap().operation,
            Operation::Import
        );
        assert_eq!(
            call("content=record&action=delete").unwrap().operation,
            Operation::Delete
        );
        assert_eq!(
            call("content=record&action=rename").unwrap().operation,
            Operation::Rename
        );
        assert_eq!(
            call("content=record&action=randomize").unwrap().operation,
            Operation::Randomize
        );
    }

    #[test]
    fn ambiguous_deciding_fields_are_rejected() {
        assert_eq!(
            call("content=record&content=user").err(),
            Some(CallError::Duplicate("content"))
        );
        assert_eq!(
            call("content[]=user").err(),
            Some(CallError::ArrayForm("content"))
        );
        assert_eq!(
            call("content=user&action=delete&action=x").err(),
            Some(CallError::Duplicate("action"))
        );
        assert_eq!(
            call("content=user&%20action=delete&action=x").err(),
            Some(CallError::Duplicate("action"))
        );
        assert_eq!(
            call("content=user&data=1&data.=2").ok().map(|c| c.data),
            Some(Some(Bytes::from_static(b"1")))
        );
        assert_eq!(
            call("content=record&token=a&token%00x=b").err(),
            Some(CallError::Duplicate("token"))
        );
        assert_eq!(
            call("content=record&returnFormat[x]=json").err(),
            Some(CallError::ArrayForm("returnFormat"))
        );
    }

    #[test]
    fn formats() {
        let c = call("content=record").unwrap();
        assert_eq!(
            (c.format, c.return_format),
            (ReturnFormat::Xml, ReturnFormat::Xml)
        );
        let c = call("content=record&format=csv").unwrap();
        assert_eq!(c.return_format, ReturnFormat::Csv);
        let c = call("content=record&format=csv&returnFormat=json").unwrap();
        assert_eq!(c.return_format, ReturnFormat::Json);
    }

    #[test]
    fn users_any_php_array_form() {
        for body in [
            "content=user&action=delete&users[]=alice&users[]=bob",
            "content=user&action=delete&users[0]=alice&users[1]=bob",
            "content=user&action=delete&users[1]=alice&users[2]=bob",
            "content=user&action=delete&users[7]=x&users[1]=alice&users[7]=zz&users[7]=bob&users[1]=alice",
        ] {
            let c = call(body).unwrap();
            let mut u = c.users.clone();
            u.sort();
            assert_eq!(u, ["alice", "bob"], "{body}");
        }
        assert_eq!(
            call("content=user&action=delete&users=alice,bob").err(),
            Some(CallError::UsersNotArray)
        );
        assert_eq!(
            call("content=user&action=delete&users[a][]=x").err(),
            Some(CallError::UsersNested)
        );
    }

    #[test]
    fn unknown_content() {
        assert_eq!(
            call("content=Record").err(),
            Some(CallError::UnknownContent)
        );
        assert_eq!(call("format=json").err(), Some(CallError::MissingContent));
    }
}
