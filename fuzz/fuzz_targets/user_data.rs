//! The json/csv/xml user-data parsers and the user rules: no panic on any input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use redcap_gateway::config::UserRulesConfig;
use redcap_gateway::policy::UserRules;
use redcap_gateway::redcap::user_data;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else { return };
    let format = ["json", "csv", "xml"][usize::from(sel) % 3];
    if let Ok(rows) = user_data::parse(format, rest) {
        let rules = UserRules::compile(&UserRulesConfig::default(), Some("owner")).expect("defaults compile");
        let _ = rules.user_import(&rows, 1_795_478_400);
        let _ = rules.dag_mapping(&rows);
        let _ = rules.role_mapping(&rows);
        let _ = rules.role_import(&rows);
    }
});
