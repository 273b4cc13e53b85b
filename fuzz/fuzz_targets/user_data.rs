//! The json/csv/xml user-data parsers and the user rules: no panic on any input, and the
//! fast JSON reader gives the general reader's answer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use redcap_gateway::config::UserRulesConfig;
use redcap_gateway::policy::UserRules;
use redcap_gateway::redcap::user_data;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let format = ["json", "csv", "xml"][usize::from(sel) % 3];
    let parsed = user_data::parse(format, rest);
    if format == "json" {
        // Differential: the fast JSON reader must agree with the general one.
        assert_eq!(parsed, user_data::parse_json_general(rest));
    }
    if let Ok(rows) = parsed {
        let rules = UserRules::compile(&UserRulesConfig::default(), Some("owner"))
            .expect("defaults compile");
        let _ = rules.user_import(&rows, 1_795_478_400);
        let _ = rules.dag_mapping(&rows);
        let _ = rules.role_mapping(&rows);
        let _ = rules.role_import(&rows);
    }
});
