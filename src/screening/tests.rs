//! The engine's rules one by one, on a fixed clock.

use super::*;

/// Thursday 2027-01-14 12:00 UTC: business hours.
const NOON: u64 = 1_799_928_000;

fn engine(profile: &str) -> Engine {
    let text = format!("[screening.profiles.default]\n{profile}");
    let config = crate::config::Config::parse(&text, "test.toml").unwrap();
    Engine::new(
        &config.screening,
        &|p| p == "suspected_fraud",
        Usage::default(),
        Lists::default(),
    )
    .unwrap()
}

fn req(call: u64, callee: &str, now: u64) -> Request {
    Request {
        call,
        call_id: format!("call-{call}"),
        profile: "default".into(),
        user: "alice@example.com".into(),
        callee: callee.into(),
        source: "192.0.2.7".parse().unwrap(),
        user_agent: "Phone/1.0".into(),
        caller_number: "alice".into(),
        identity: None,
        date: None,
        stir: None,
        shared: None,
        now,
    }
}

fn checks(e: &mut Engine, r: &Request) -> (String, Vec<&'static str>) {
    let out = e.screen(r);
    let name = match &out.decision {
        Decision::Block(v) => format!("block {}", v.name()),
        d => d.name().to_owned(),
    };
    (name, out.findings.iter().map(|f| f.check).collect())
}

const ONLY: &str = "checks = [";

#[test]
fn a_national_call_passes_and_counts() {
    let mut e = engine("");
    let out = e.screen(&req(1, "02079460000", NOON));
    assert_eq!(out.decision, Decision::Allow);
    assert_eq!(out.destination.as_deref(), Some("442079460000"));
    assert_eq!(out.country.as_deref(), Some("GB"));
    assert_eq!(
        e.usage()
            .figures("alice@example.com", NOON, 600)
            .calls_last_hour,
        1
    );
}

#[test]
fn the_clusters_shared_figures_decide_over_the_nodes_own() {
    let mut e = engine(&format!(
        "{ONLY}\"quotas\", \"concurrency\"]\ncalls_per_hour = 3\nmax_concurrent = 2"
    ));
    let mut r = req(1, "02079460000", NOON);
    // This node has seen nothing; the cluster has seen three calls this hour.
    let shared = |figures| {
        Some(usage::Shared {
            figures,
            ..Default::default()
        })
    };
    r.shared = shared(usage::Figures {
        calls_last_hour: 3,
        ..Default::default()
    });
    assert_eq!(checks(&mut e, &r), ("block 603".into(), vec!["quotas"]));
    r.shared = shared(usage::Figures {
        calls_last_hour: 2,
        live_calls: 2,
        ..Default::default()
    });
    assert_eq!(
        checks(&mut e, &r),
        ("block 603".into(), vec!["concurrency"])
    );
    r.shared = shared(usage::Figures {
        calls_last_hour: 2,
        live_calls: 1,
        ..Default::default()
    });
    assert_eq!(checks(&mut e, &r).0, "allow");
    // What counting needs before the rules run: abroad or not; trusted sources count not.
    assert_eq!(
        e.counting(&req(2, "0033123456789", NOON))
            .map(|c| c.international),
        Some(true)
    );
    assert_eq!(
        e.counting(&req(3, "02079460000", NOON))
            .map(|c| c.international),
        Some(false)
    );
}

#[test]
fn block_and_allow_lists_from_config_and_operator() {
    let mut e = engine(&format!(
        "{ONLY}\"lists\"]\nblock_prefixes = [\"+4930\"]\nallow_numbers = [\"+493099\"]"
    ));
    assert_eq!(checks(&mut e, &req(1, "0049301234", NOON)).0, "block 603");
    assert_eq!(checks(&mut e, &req(2, "00493099", NOON)).0, "allow");
    e.add_entry(ListName::Block, EntryKind::Country, "fr", "", NOON)
        .unwrap();
    assert_eq!(
        checks(&mut e, &req(3, "0033123456789", NOON)),
        ("block 603".into(), vec!["lists"])
    );
    assert!(
        e.remove_entry(ListName::Block, EntryKind::Country, "FR")
            .unwrap()
    );
    assert_eq!(checks(&mut e, &req(4, "0033123456789", NOON)).0, "allow");
    assert!(
        e.add_entry(ListName::Block, EntryKind::Country, "QQ", "", NOON)
            .is_err()
    );
}

#[test]
fn high_risk_ranges_block_and_premium_ranges_flag() {
    let mut e = engine(&format!(
        "{ONLY}\"high_risk\"]\nverdict_by_country = {{ CU = {{ reject = 608, prompt = \"suspected_fraud\" }} }}"
    ));
    let out = e.screen(&req(1, "005371234567", NOON));
    assert_eq!(
        out.decision,
        Decision::Block(Verdict {
            answer: Answer::Rejected,
            prompt: Some("suspected_fraud".into())
        })
    );
    assert!(
        out.reason().contains("irsf range +53 (Cuba)"),
        "{}",
        out.reason()
    );
    let out = e.screen(&req(2, "00979123456789", NOON));
    assert_eq!((out.decision, out.score), (Decision::Allow, 30));
}

#[test]
fn an_allow_listed_destination_skips_the_range_rules() {
    let mut e = engine(&format!(
        "{ONLY}\"lists\", \"high_risk\", \"new_country\"]\nallow_countries = [\"CU\"]"
    ));
    assert_eq!(
        checks(&mut e, &req(1, "005371234567", NOON)),
        ("allow".into(), vec![])
    );
}

#[test]
fn short_premium_bursts_block_the_next_premium_call() {
    let mut e = engine(&format!(
        "{ONLY}\"premium_burst\"]\npremium_burst_calls = 3"
    ));
    for i in 0..3 {
        assert_eq!(
            checks(&mut e, &req(i, "00979123456789", NOON + i * 30)).0,
            "allow"
        );
        e.call_ended(i, 4, NOON + i * 30 + 10);
    }
    assert_eq!(
        checks(&mut e, &req(9, "00979123456789", NOON + 100)),
        ("block 603".into(), vec!["premium_burst"])
    );
    // Ordinary numbers are not affected, and the window passes.
    assert_eq!(
        checks(&mut e, &req(10, "02079460000", NOON + 100)).0,
        "allow"
    );
    assert_eq!(
        checks(&mut e, &req(11, "00979123456789", NOON + 800)).0,
        "allow"
    );
}

#[test]
fn scanners_are_blocked_by_user_agent() {
    let mut e = engine(&format!("{ONLY}\"scanner\"]"));
    let mut r = req(1, "02079460000", NOON);
    r.user_agent = "friendly-scanner".into();
    assert_eq!(checks(&mut e, &r), ("block 603".into(), vec!["scanner"]));
}

#[test]
fn more_than_five_calls_to_one_number_in_30_s_are_blocked() {
    let mut e = engine(&format!("{ONLY}\"repeats\"]"));
    for i in 0..5 {
        assert_eq!(checks(&mut e, &req(i, "02079460000", NOON + i)).0, "allow");
    }
    assert_eq!(
        checks(&mut e, &req(5, "02079460000", NOON + 5)).1,
        vec!["repeats"]
    );
    assert_eq!(checks(&mut e, &req(6, "02079460001", NOON + 6)).0, "allow");
    assert_eq!(checks(&mut e, &req(7, "02079460000", NOON + 40)).0, "allow");
}

#[test]
fn quotas_per_hour_day_minutes_and_international() {
    let mut e = engine(&format!(
        "{ONLY}\"quotas\"]\ncalls_per_hour = 3\ncalls_per_day = 4"
    ));
    for i in 0..3 {
        assert_eq!(checks(&mut e, &req(i, "02079460000", NOON + i)).0, "allow");
    }
    let out = e.screen(&req(3, "02079460000", NOON + 3));
    assert!(
        out.reason().contains("calls per hour: 3 of 3 used"),
        "{}",
        out.reason()
    );
    // An hour later the hour quota has room; the day quota has one call left.
    assert_eq!(
        checks(&mut e, &req(4, "02079460000", NOON + 3600)).0,
        "allow"
    );
    let out = e.screen(&req(5, "02079460000", NOON + 3601));
    assert!(
        out.reason().contains("calls per day: 4 of 4 used"),
        "{}",
        out.reason()
    );

    let mut e = engine(&format!("{ONLY}\"quotas\"]\nminutes_per_day = 2"));
    e.screen(&req(1, "02079460000", NOON));
    e.call_ended(1, 130, NOON + 130);
    assert!(
        e.screen(&req(2, "02079460000", NOON + 200))
            .reason()
            .contains("minutes per day: 2 of 2")
    );

    let mut e = engine(&format!("{ONLY}\"quotas\"]\ninternational_per_day = 1"));
    assert_eq!(checks(&mut e, &req(1, "0049301234", NOON)).0, "allow");
    assert_eq!(
        checks(&mut e, &req(2, "02079460000", NOON + 1)).0,
        "allow",
        "national calls are not counted"
    );
    assert_eq!(
        checks(&mut e, &req(3, "0049301234", NOON + 2)).1,
        vec!["quotas"]
    );
}

#[test]
fn concurrency_limits_differ_in_business_and_off_hours() {
    let mut e = engine(&format!(
        "{ONLY}\"concurrency\"]\nmax_concurrent = 2\nmax_concurrent_off_hours = 1"
    ));
    assert_eq!(checks(&mut e, &req(1, "02079460000", NOON)).0, "allow");
    assert_eq!(checks(&mut e, &req(2, "02079460000", NOON)).0, "allow");
    assert_eq!(
        checks(&mut e, &req(3, "02079460000", NOON)).1,
        vec!["concurrency"]
    );
    e.call_ended(2, 10, NOON + 10);
    // 23:00 is off hours: one live call is the limit.
    let night = NOON + 11 * 3600;
    let out = e.screen(&req(4, "02079460000", night));
    assert!(
        out.reason().contains("the limit in off hours is 1"),
        "{}",
        out.reason()
    );
    e.call_ended(1, 10, night);
    assert_eq!(checks(&mut e, &req(5, "02079460000", night)).0, "allow");
}

#[test]
fn a_new_country_is_flagged_then_known() {
    let mut e = engine(&format!("{ONLY}\"new_country\"]"));
    let out = e.screen(&req(1, "0049301234", NOON));
    assert_eq!((out.decision.clone(), out.score), (Decision::Allow, 30));
    assert_eq!(out.reason(), "new_country: first call to DE");
    assert_eq!(
        checks(&mut e, &req(2, "0049301235", NOON + 1)),
        ("allow".into(), vec![])
    );
}

#[test]
fn a_new_country_challenge_passed_joins_the_allow_list() {
    let mut e = engine(&format!(
        "{ONLY}\"new_country\"]\non_new_country = \"challenge\""
    ));
    let out = e.screen(&req(1, "0049301234", NOON));
    assert_eq!(
        out.decision,
        Decision::Challenge {
            value: "country:DE".into()
        }
    );
    assert_eq!(
        e.usage().figures("alice@example.com", NOON, 600).live_calls,
        0,
        "held, not admitted"
    );
    e.challenge_passed(1, NOON + 20);
    assert_eq!(
        e.usage()
            .figures("alice@example.com", NOON + 20, 600)
            .live_calls,
        1
    );
    assert!(e.lists().user_allows("alice@example.com", "country:DE"));
    let changes = e.take_changes();
    assert!(
        changes
            .iter()
            .any(|c| matches!(c, Change::UserAllow { value, .. } if value == "country:DE"))
    );
}

#[test]
fn an_hourly_volume_jump_past_the_baseline_is_flagged() {
    let mut e = engine(&format!(
        "{ONLY}\"volume_jump\"]\nvolume_jump_factor = 3.0\nvolume_jump_min_calls = 5\nvolume_jump_min_history_h = 2"
    ));
    let mut id = 0;
    // A baseline of two calls an hour, for three hours yesterday.
    for h in 0..3 {
        for _ in 0..2 {
            id += 1;
            e.screen(&req(id, "02079460000", NOON - 86_400 + h * 3600));
        }
    }
    let mut fired_at = None;
    for n in 1..=8 {
        id += 1;
        let out = e.screen(&req(id, &format!("0207946{n:04}"), NOON + n));
        if !out.findings.is_empty() && fired_at.is_none() {
            fired_at = Some(n);
        }
    }
    // 7 calls in the hour is past 3 x 2.0; 6 is not.
    assert_eq!(fired_at, Some(7));
}

#[test]
fn flags_add_up_to_challenge_then_block() {
    let mut e = engine(&format!(
        "{ONLY}\"high_risk\", \"new_country\"]\non_high_risk = \"flag\"\nchallenge_score = 60\nblock_score = 90"
    ));
    // Premium range (flag) + new country (flag) = 60: challenge.
    let out = e.screen(&req(1, "00979123456789", NOON));
    assert_eq!((out.score, out.decision.name()), (60, "challenge"));
    let mut e = engine(&format!(
        "{ONLY}\"high_risk\", \"new_country\", \"scanner\"]\non_high_risk = \"flag\"\nflag_score = 50\nblock_score = 100"
    ));
    let out = e.screen(&req(1, "00979123456789", NOON));
    assert_eq!((out.score, out.decision.name()), (100, "block"));
}

#[test]
fn source_checks_run_for_every_profile() {
    let config = crate::config::Config::parse(
        "[screening]\ntrusted_sources = [\"10.0.0.0/8\"]\nblocked_sources = [\"203.0.113.0/24\"]\ncalls_per_source_per_second = 2\n",
        "t.toml",
    )
    .unwrap();
    let mut e = Engine::new(
        &config.screening,
        &|_| true,
        Usage::default(),
        Lists::default(),
    )
    .unwrap();
    let mut r = req(1, "005371234567", NOON);
    r.source = "10.1.2.3".parse().unwrap();
    let out = e.screen(&r);
    assert!(
        out.trusted && out.decision == Decision::Allow,
        "trusted peers skip the rules"
    );
    r.source = "203.0.113.5".parse().unwrap();
    assert_eq!(checks(&mut e, &r).1, vec!["blocked_source"]);
    r.source = "198.51.100.1".parse().unwrap();
    r.callee = "02079460000".into();
    assert_eq!(checks(&mut e, &r).0, "allow");
    assert_eq!(checks(&mut e, &r).0, "allow");
    assert_eq!(
        checks(&mut e, &r),
        ("block 503".into(), vec!["source_rate"])
    );
    r.now += 1;
    assert_eq!(checks(&mut e, &r).0, "allow");
}

#[test]
fn verdicts_per_check_and_country() {
    let mut e = engine(&format!(
        "{ONLY}\"high_risk\", \"scanner\"]\nverdict = {{ reject = \"603+\" }}\nverdict_by_check = {{ scanner = {{ reject = 503 }} }}\nverdict_by_country = {{ JM = {{ redirect = \"999\" }} }}"
    ));
    assert_eq!(
        checks(&mut e, &req(1, "005371234567", NOON)).0,
        "block 603+"
    );
    assert_eq!(
        checks(&mut e, &req(2, "0018765551234", NOON)).0,
        "block 302 999"
    );
    let mut r = req(3, "02079460000", NOON);
    r.user_agent = "sipvicious".into();
    assert_eq!(checks(&mut e, &r).0, "block 503");
}

#[test]
fn bad_profiles_are_refused_with_the_cause() {
    let bad = |text: &str| match crate::config::Config::parse(text, "t.toml") {
        Err(e) => e.to_string(),
        Ok(config) => Engine::new(
            &config.screening,
            &|_| false,
            Usage::default(),
            Lists::default(),
        )
        .err()
        .unwrap_or_default(),
    };
    let err = bad("[screening.profiles.x]\nhome_country = \"XX\"\n");
    assert!(
        err.contains("screening.profiles.x: home_country \"XX\""),
        "{err}"
    );
    let err = bad("[screening.profiles.x]\nchecks = [\"astrology\"]\n");
    assert!(err.contains("\"astrology\" is not one of"), "{err}");
    let err = bad("[screening.profiles.x]\nverdict = { reject = 404 }\n");
    assert!(err.contains("reject 404"), "{err}");
    let err = bad("[screening.profiles.x]\nverdict = { reject = 608, prompt = \"nope\" }\n");
    assert!(err.contains("no prompt named \"nope\""), "{err}");
}

#[test]
fn operators_reset_and_remove_users() {
    let mut e = engine(&format!("{ONLY}\"quotas\"]\ncalls_per_hour = 1"));
    e.screen(&req(1, "02079460000", NOON));
    assert_eq!(
        checks(&mut e, &req(2, "02079460000", NOON + 1)).1,
        vec!["quotas"]
    );
    assert!(e.reset_user("alice@example.com"));
    assert_eq!(checks(&mut e, &req(3, "02079460000", NOON + 2)).0, "allow");
    assert!(e.remove_user("alice@example.com"));
    assert!(!e.remove_user("nobody@example.com"));
}

#[test]
fn a_call_from_a_new_network_is_flagged_once_the_user_has_a_history() {
    let mut e = engine(&format!(
        "{ONLY}\"new_source\"]\non_new_source = \"challenge\""
    ));
    // The first call ever sets the history; a second from the same /24 is known.
    assert_eq!(
        checks(&mut e, &req(1, "02079460000", NOON)),
        ("allow".into(), vec![])
    );
    let mut r = req(2, "02079460000", NOON + 1);
    r.source = "192.0.2.200".parse().unwrap();
    assert_eq!(checks(&mut e, &r).0, "allow");
    r = req(3, "02079460000", NOON + 2);
    r.source = "198.51.100.9".parse().unwrap();
    let out = e.screen(&r);
    assert_eq!(
        out.decision,
        Decision::Challenge {
            value: "source:198.51.100.0/24".into()
        }
    );
    assert_eq!(out.reason(), "new_source: first call from 198.51.100.0/24");
    e.challenge_passed(3, NOON + 30);
    r = req(4, "02079460000", NOON + 40);
    r.source = "198.51.100.10".parse().unwrap();
    assert_eq!(
        checks(&mut e, &r).0,
        "allow",
        "the passed challenge vouched for the network"
    );
    assert_eq!(
        usage::network_of("2001:db8:1:2:3::9".parse().unwrap()),
        "2001:db8:1:2::/64"
    );
}

#[test]
fn a_challenge_passed_for_a_score_or_quota_vouches_for_nothing() {
    let mut e = engine(&format!(
        "{ONLY}\"high_risk\", \"quotas\"]\non_high_risk = \"flag\"\nflag_score = 60\nchallenge_score = 60\n\
         on_quota = \"challenge\"\ncalls_per_hour = 1"
    ));
    let out = e.screen(&req(1, "005371234567", NOON));
    assert_eq!(
        out.decision,
        Decision::Challenge {
            value: "score".into()
        }
    );
    e.challenge_passed(1, NOON + 20);
    let out = e.screen(&req(2, "02079460000", NOON + 30));
    assert_eq!(
        out.decision,
        Decision::Challenge {
            value: "quota".into()
        }
    );
    e.challenge_passed(2, NOON + 40);
    assert!(e.lists().user_allow_list("alice@example.com").is_empty());
    assert_eq!(
        e.usage()
            .figures("alice@example.com", NOON + 40, 600)
            .calls_last_hour,
        2,
        "both admitted"
    );
}

#[test]
fn a_challenge_passed_on_another_node_allows_the_country_here() {
    let mut e = engine(&format!(
        "{ONLY}\"lists\", \"new_country\"]\non_new_country = \"challenge\""
    ));
    let mut r = req(1, "0049301234", NOON);
    let mut shared = usage::Shared::default();
    shared.countries.insert("FR".into());
    r.shared = Some(shared.clone());
    assert!(matches!(e.screen(&r).decision, Decision::Challenge { .. }));
    shared.allowed.insert("country:DE".into());
    r.shared = Some(shared);
    r.call = 2;
    assert_eq!(e.screen(&r).decision, Decision::Allow);
}
