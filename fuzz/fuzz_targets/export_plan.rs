#![no_main]
//! filterLogic references and restricted export plans: never a panic, and a plan never
//! asks REDCap for a field the rights remove, nor lets a filter name one.

use libfuzzer_sys::fuzz_target;
use redcap_gateway::policy::{ExportLevel, ExportRights};
use redcap_gateway::redcap::logic::references;
use redcap_gateway::redcap::metadata::{ExportParams, ProjectMetadata};
use redcap_gateway::redcap::php_form::{parse_urlencoded, PhpLimits};

const META: &str = r#"[
 {"field_name":"record_id","form_name":"a","field_type":"text"},
 {"field_name":"name","form_name":"a","field_type":"text","identifier":"y"},
 {"field_name":"dob","form_name":"a","field_type":"text","text_validation_type_or_show_slider_number":"date_ymd"},
 {"field_name":"age","form_name":"a","field_type":"text","text_validation_type_or_show_slider_number":"integer"},
 {"field_name":"cb","form_name":"b","field_type":"checkbox"},
 {"field_name":"memo","form_name":"b","field_type":"notes"}]"#;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = references(s);
    }
    let Ok(meta) = ProjectMetadata::from_json(META.as_bytes(), b"[]", None) else {
        return;
    };
    let level = match data.first().map(|b| b % 4) {
        Some(0) => ExportLevel::None,
        Some(1) => ExportLevel::Deidentified,
        Some(2) => ExportLevel::RemoveIdentifiers,
        _ => ExportLevel::Full,
    };
    let rights = ExportRights { default: level, forms: Default::default() };
    let view = meta.view(&rights);
    let Ok(form) = parse_urlencoded(data.get(1..).unwrap_or(&[]), PhpLimits::default()) else {
        return;
    };
    let Ok(params) = ExportParams::read(&form.post) else {
        return;
    };
    if let Ok(plan) = meta.plan(&view, &params) {
        for f in plan.fields.split(',') {
            let i = meta.fields.iter().position(|x| x.name == f).expect("a known field");
            assert!(meta.removed(i, &rights).is_none(), "{f} asked for at {level:?}");
        }
    }
});
