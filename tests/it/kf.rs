//! `wxdispatch kf`: WeCom customer-service administration against the simulator, with the
//! real token store in Postgres. Each command succeeds, refuses bad input without any call
//! (the simulator counts every kf request and every gettoken), and surfaces a platform
//! errcode clearly. The library is called directly; the binary is run for exit codes, the
//! one-line error and `--json`.

use std::collections::BTreeMap;
use std::process::Output;

use serde_json::{Value, json};
use wxdispatch::platform::kf::{KfClient, KfError, stats_range, wecom_midnight, wecom_today};
use wxdispatch::tools::simulate::SimOptions;

use crate::crash::write_config;
use crate::harness::{Env, wecom_account};

const ACCOUNT: &str = "kfadm";
const KFID: &str = "wkKF1";

async fn env() -> Env {
    Env::new(
        |base| vec![wecom_account(ACCOUNT, base)],
        SimOptions::default(),
    )
    .await
}

async fn client(env: &Env) -> KfClient {
    KfClient::connect(&env.cfg, ACCOUNT).await.unwrap()
}

fn base(env: &Env) -> String {
    env.sim.as_ref().unwrap().base_url()
}

/// Requests the simulator received per kf API.
async fn calls(env: &Env) -> BTreeMap<String, u64> {
    let v: Value = reqwest::get(format!("{}/_sim/kf/calls", base(env)))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    serde_json::from_value(v["calls"].clone()).unwrap()
}

fn total(c: &BTreeMap<String, u64>) -> u64 {
    c.values().sum()
}

fn gettokens(env: &Env) -> u64 {
    env.sim().gettoken_calls(&format!("ww{ACCOUNT}"))
}

async fn script(env: &Env, api: &str, errcodes: &[i64]) {
    let r = reqwest::Client::new()
        .post(format!("{}/_sim/kf/script", base(env)))
        .json(&json!({"api": api, "errcodes": errcodes}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
}

async fn sim_state(env: &Env) -> Value {
    reqwest::get(format!("{}/_sim/kf/state", base(env)))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn assert_invalid<T: std::fmt::Debug>(r: Result<T, KfError>, contains: &str) {
    match r {
        Err(KfError::Invalid(m)) => assert!(m.contains(contains), "{m:?} lacks {contains:?}"),
        other => panic!("expected Invalid({contains:?}), got {other:?}"),
    }
}

fn assert_errcode<T: std::fmt::Debug>(r: Result<T, KfError>, code: i64) -> String {
    match r {
        Err(e @ KfError::Platform { .. }) => {
            assert_eq!(e.errcode(), Some(code), "{e}");
            e.to_string()
        }
        other => panic!("expected errcode {code}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_list_add_update_link_delete() {
    let env = env().await;
    let c = client(&env).await;

    // Refused before any call: not even a token is fetched.
    assert_invalid(
        c.account_add("一二三四五六七八九十一二三四五六七", "m1")
            .await,
        "17 characters",
    );
    assert_invalid(c.account_add("ok", &"m".repeat(129)).await, "--media-id");
    assert_invalid(
        c.account_update(KFID, None, None).await,
        "nothing to update",
    );
    assert_invalid(c.account_link(KFID, Some("spring sale")).await, "--scene");
    assert_invalid(c.account_link(KFID, Some(&"s".repeat(33))).await, "--scene");
    assert_invalid(c.account_delete("wk/../x").await, "open_kfid");
    assert_eq!(total(&calls(&env).await), 0);
    assert_eq!(gettokens(&env), 0);

    // The configured account is there; a new one (16 CJK characters is fine) joins it.
    let list = c.account_list().await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(
        (list[0].open_kfid.as_str(), list[0].name.as_str()),
        (KFID, ACCOUNT)
    );
    let name = "一二三四五六七八九十一二三四五六";
    let new = c.account_add(name, "MEDIA1").await.unwrap();
    assert!(new.starts_with("wk") && new.len() == 32, "{new}");
    let list = c.account_list().await.unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[1].name, name);

    c.account_update(&new, Some("售后"), None).await.unwrap();
    let st = sim_state(&env).await;
    let acct = &st["corps"][0]["accounts"][1];
    assert_eq!(
        (acct["name"].as_str(), acct["media_id"].as_str()),
        (Some("售后"), Some("MEDIA1"))
    );

    let url = c
        .account_link(&new, Some("spring-sale_2026"))
        .await
        .unwrap();
    assert!(
        url.starts_with("https://work.weixin.qq.com/kf/kfc"),
        "{url}"
    );
    assert!(url.contains("enc_scene="), "{url}");
    let plain = c.account_link(&new, None).await.unwrap();
    assert!(!plain.contains("enc_scene"), "{plain}");

    c.account_delete(&new).await.unwrap();
    assert_eq!(c.account_list().await.unwrap().len(), 1);

    // The platform's errcode, surfaced with the policy's reading of it.
    let msg = assert_errcode(c.account_delete(&new).await, 95000);
    assert!(
        msg.starts_with("kf/account/del: errcode 95000 (invalid_open_kfid): invalid open_kfid"),
        "{msg}"
    );
    assert_errcode(c.account_update("wkNope", Some("x"), None).await, 95000);
    assert_errcode(c.account_link("wkNope", None).await, 95000);

    let n = calls(&env).await;
    assert_eq!(n["account/add"], 1);
    assert_eq!(n["account/list"], 3);
    assert_eq!(n["account/update"], 2);
    assert_eq!(n["add_contact_way"], 3);
    assert_eq!(n["account/del"], 2);
    // One token for all of it, shared through Postgres.
    assert_eq!(gettokens(&env), 1);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servicers_in_batches_of_100_with_per_user_results() {
    let env = env().await;
    let c = client(&env).await;
    let mut users: Vec<String> = (0..250).map(|i| format!("agent{i:03}")).collect();
    users[7] = "ghost-7".into();
    users[201] = "ghost-201".into();

    // One malformed userid refuses the whole command, before any call.
    let mut bad = users.clone();
    bad.push("has space".into());
    bad.push("_underscore_first".into());
    assert_invalid(
        c.servicer_add(KFID, &bad).await,
        "2 invalid userid(s), nothing sent",
    );
    assert_invalid(c.servicer_list("").await, "open_kfid");
    assert_eq!(total(&calls(&env).await), 0);
    assert_eq!(gettokens(&env), 0);

    // 250 userids: 3 calls (100 + 100 + 50), one result per user.
    let o = c.servicer_add(KFID, &users).await.unwrap();
    assert!(o.error.is_none(), "{:?}", o.error);
    assert_eq!(o.calls, 3);
    assert_eq!(calls(&env).await["servicer/add"], 3);
    let results = &o.done.result_list;
    assert_eq!(results.len(), 250);
    let failed: Vec<(&str, i64)> = results
        .iter()
        .filter(|r| r.errcode != 0)
        .map(|r| (r.userid.as_str(), r.errcode))
        .collect();
    assert_eq!(failed, vec![("ghost-7", 60111), ("ghost-201", 60111)]);

    let list = c.servicer_list(KFID).await.unwrap();
    assert_eq!(list.len(), 248);
    assert!(list.iter().all(|s| s.status == Some(0)));

    // Adding again is "ignored" per user; repeats in the input are sent once.
    let again = vec![
        "agent000".to_string(),
        "agent000".to_string(),
        "agent001".into(),
    ];
    let o = c.servicer_add(KFID, &again).await.unwrap();
    assert_eq!(o.calls, 1);
    assert_eq!(o.done.result_list.len(), 2);
    assert!(
        o.done
            .result_list
            .iter()
            .all(|r| r.errcode == 0 && r.errmsg == "ignored")
    );

    // Removing the first 150 (ghost-7 among them was never added): 2 calls, 99 remain.
    let o = c.servicer_remove(KFID, &users[..150]).await.unwrap();
    assert_eq!(o.calls, 2);
    assert_eq!(
        o.done
            .result_list
            .iter()
            .filter(|r| r.errmsg == "success")
            .count(),
        149
    );
    assert_eq!(c.servicer_list(KFID).await.unwrap().len(), 99);

    // A refused batch stops the command: 1 call, the other 150 not attempted.
    let o = c.servicer_add("wkNope", &users).await.unwrap();
    assert_eq!(o.calls, 1);
    assert_eq!(o.not_attempted.len(), 150);
    assert_eq!(o.not_attempted[0], "agent100");
    assert_errcode(Err::<(), _>(o.error.unwrap()), 95000);
    assert_errcode(c.servicer_list("wkNope").await, 95000);
    assert_eq!(calls(&env).await["servicer/add"], 3 + 1 + 1);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customers_in_batches_with_invalid_ids_listed_apart() {
    let env = env().await;
    let sim = env.sim();
    for u in ["wmAlice", "wmBob", "wmCarol"] {
        sim.customer_message(ACCOUNT, KFID, u, "hello");
    }
    let c = client(&env).await;

    assert_invalid(
        c.customer_get(&["wmAlice".into(), "wm Bob".into()], false)
            .await,
        "1 invalid external_userid(s)",
    );
    assert_invalid(c.customer_get(&[], false).await, "no external_userid");
    assert_eq!(total(&calls(&env).await), 0);
    assert_eq!(gettokens(&env), 0);

    let ids: Vec<String> = ["wmAlice", "wmUnknown", "wmBob", "wmCarol", "wmNobody"]
        .map(String::from)
        .to_vec();
    let o = c.customer_get(&ids, true).await.unwrap();
    assert!(o.error.is_none());
    let found: Vec<&str> = o
        .done
        .customer_list
        .iter()
        .map(|c| c.external_userid.as_str())
        .collect();
    assert_eq!(found, ["wmAlice", "wmBob", "wmCarol"]);
    assert!(o.done.customer_list[0].nickname.contains("lice"));
    assert!(
        o.done.customer_list[0]
            .extra
            .contains_key("enter_session_context")
    );
    assert_eq!(o.done.invalid_external_userid, ["wmUnknown", "wmNobody"]);

    // 150 ids: 2 calls.
    let many: Vec<String> = (0..150).map(|i| format!("wmU{i}")).collect();
    let o = c.customer_get(&many, false).await.unwrap();
    assert_eq!(o.calls, 2);
    assert_eq!(o.done.invalid_external_userid.len(), 150);
    assert_eq!(calls(&env).await["customer/batchget"], 3);

    // A platform refusal (here the minute limit) names the errcode and what to do.
    script(&env, "customer/batchget", &[45009]).await;
    let o = c.customer_get(&many, false).await.unwrap();
    assert_eq!((o.calls, o.not_attempted.len()), (1, 50));
    let msg = assert_errcode(Err::<(), _>(o.error.unwrap()), 45009);
    assert!(msg.contains("throttled: wait at least 60 s"), "{msg}");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_get_and_checked_transfers() {
    let env = env().await;
    let sim = env.sim();
    sim.customer_message(ACCOUNT, KFID, "wmAlice", "hi");
    let c = client(&env).await;
    let trans = || {
        sim.accepted_for(ACCOUNT)
            .iter()
            .filter(|a| a.api == "service_state_trans")
            .count()
    };

    assert_invalid(
        c.session_transfer(KFID, "wmAlice", 3, None).await,
        "--servicer",
    );
    assert_invalid(
        c.session_transfer(KFID, "wmAlice", 2, Some("zhangsan"))
            .await,
        "only for --state 3",
    );
    assert_invalid(
        c.session_transfer(KFID, "wmAlice", 0, None).await,
        "--state 0",
    );
    assert_invalid(
        c.session_transfer(KFID, "wmAlice", 7, None).await,
        "--state 7",
    );
    assert_invalid(c.session_get(KFID, "wm Alice").await, "external_userid");
    assert_eq!(gettokens(&env), 0);

    let s = c.session_get(KFID, "wmAlice").await.unwrap();
    assert_eq!((s.service_state, s.state_name), (0, "new"));

    let t = c.session_transfer(KFID, "wmAlice", 1, None).await.unwrap();
    assert_eq!((t.from, t.to, t.msg_code.as_deref()), (0, 1, None));
    let t = c
        .session_transfer(KFID, "wmAlice", 3, Some("zhangsan"))
        .await
        .unwrap();
    assert_eq!((t.from, t.to), (1, 3));
    let code = t.msg_code.expect("the first move into 3 issues a msg_code");
    assert!(!code.is_empty());
    let s = c.session_get(KFID, "wmAlice").await.unwrap();
    assert_eq!(
        (s.service_state, s.servicer_userid.as_deref()),
        (3, Some("zhangsan"))
    );
    assert_eq!(trans(), 2);

    // 3 → 1 is not a move WeCom allows: refused after reading the state, no trans call.
    match c.session_transfer(KFID, "wmAlice", 1, None).await {
        Err(KfError::NotAllowed(m)) => {
            assert!(m.contains("state 3 (human)") && m.contains("3 → 1"), "{m}")
        }
        other => panic!("expected NotAllowed, got {other:?}"),
    }
    assert_eq!(trans(), 2);
    assert_eq!(sim.service_state(KFID, "wmAlice").0, 3);

    // Ending the session issues the farewell code.
    let t = c.session_transfer(KFID, "wmAlice", 4, None).await.unwrap();
    assert!(t.msg_code.is_some());
    assert_eq!(trans(), 3);

    assert_errcode(c.session_get("wkNope", "wmAlice").await, 95000);
    assert_errcode(
        c.session_transfer("wkNope", "wmAlice", 1, None).await,
        95000,
    );
    assert_eq!(trans(), 3);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_by_day_within_the_platform_limits() {
    let env = env().await;
    let c = client(&env).await;
    let today = wecom_today();
    let day = |back: u64| (today - chrono::Days::new(back)).to_string();

    // Refused before any call: too wide, today, too old, reversed, not a date.
    assert_invalid(stats_range(&day(32), &day(1), today), "32 days");
    assert_invalid(stats_range(&day(3), &day(0), today), "the latest is");
    assert_invalid(stats_range(&day(181), &day(175), today), "180 days");
    assert_invalid(stats_range(&day(1), &day(3), today), "is after");
    assert_invalid(stats_range("2026-13-01", &day(1), today), "YYYY-MM-DD");
    assert_eq!(total(&calls(&env).await), 0);

    let r = stats_range(&day(7), &day(1), today).unwrap();
    let days = c.stats_corp(KFID, &r).await.unwrap();
    assert_eq!(days.len(), 7);
    assert_eq!(
        days[0].stat_time,
        wecom_midnight(today - chrono::Days::new(7))
    );
    assert_eq!(days[6].stat_time - days[0].stat_time, 6 * 86_400);
    for d in &days {
        let s = &d.statistic;
        assert!(
            s["customer_cnt"].as_u64() <= s["session_cnt"].as_u64(),
            "{s:?}"
        );
        assert!(s.contains_key("ai_transfer_rate"));
    }
    // A pure function of (open_kfid, day): asking again gives the same numbers.
    assert_eq!(c.stats_corp(KFID, &r).await.unwrap(), days);

    let r31 = stats_range(&day(31), &day(1), today).unwrap();
    let mine = c
        .stats_servicer(KFID, Some("zhangsan"), &r31)
        .await
        .unwrap();
    assert_eq!(mine.len(), 31);
    assert!(mine[0].statistic.contains_key("first_reply_average_sec"));
    let all = c.stats_servicer(KFID, None, &r).await.unwrap();
    assert_eq!(all.len(), 7);

    let msg = assert_errcode(c.stats_servicer(KFID, Some("ghost-1"), &r).await, 60111);
    assert!(
        msg.starts_with("kf/get_servicer_statistic: errcode 60111"),
        "{msg}"
    );
    assert_errcode(c.stats_corp("wkNope", &r).await, 95000);
    let n = calls(&env).await;
    assert_eq!(
        (n["get_corp_statistic"], n["get_servicer_statistic"]),
        (3, 3)
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_tokens_are_refreshed_once_for_kf_calls_too() {
    let env = env().await;
    let c = client(&env).await;
    c.account_list().await.unwrap();
    c.servicer_list(KFID).await.unwrap();
    assert_eq!(gettokens(&env), 1);
    // Expired (42001) on a POST API and on the GET one: each refreshes and retries once.
    env.sim().expire_tokens();
    c.account_list().await.unwrap();
    env.sim().revoke_tokens();
    c.servicer_list(KFID).await.unwrap();
    assert_eq!(gettokens(&env), 3);
    let n = calls(&env).await;
    assert_eq!((n["account/list"], n["servicer/list"]), (3, 3));
    env.cleanup().await;
}

// ------------------------------------------------------------------------------ the binary

async fn wxdispatch(config: &std::path::Path, args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_wxdispatch"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .await
        .unwrap()
}

fn stderr_line(o: &Output) -> String {
    let s = String::from_utf8_lossy(&o.stderr);
    let lines: Vec<&str> = s.lines().collect();
    assert_eq!(lines.len(), 1, "one line on stderr: {s}");
    lines[0].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_exit_codes_json_and_one_line_errors() {
    let env = env().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&env, dir.path());
    let stdout = |o: &Output| String::from_utf8_lossy(&o.stdout).into_owned();

    // Bad input: exit 2, nothing sent.
    let o = wxdispatch(
        &config,
        &[
            "kf",
            "account",
            "add",
            "--account",
            ACCOUNT,
            "--name",
            "x",
            "--media-id",
            "a b",
        ],
    )
    .await;
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert!(stderr_line(&o).contains("--media-id: contains whitespace"));
    let o = wxdispatch(&config, &["kf", "account", "list", "--account", "nosuch"]).await;
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr_line(&o).contains("no such account in the config (wecom accounts: kfadm)"));
    let o = wxdispatch(
        &config,
        &[
            "kf",
            "stats",
            "corp",
            "--account",
            ACCOUNT,
            "--from",
            "2020-01-01",
            "--to",
            "2020-01-02",
        ],
    )
    .await;
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(total(&calls(&env).await), 0);
    assert_eq!(gettokens(&env), 0);

    // --json for scripts.
    let o = wxdispatch(
        &config,
        &["kf", "account", "list", "--account", ACCOUNT, "--json"],
    )
    .await;
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["account_list"][0]["open_kfid"], KFID);

    // A table by default; per-user failures: exit 1, the errcode in one stderr line.
    let o = wxdispatch(
        &config,
        &[
            "kf",
            "servicer",
            "add",
            KFID,
            "zhangsan",
            "ghost-1",
            "lisi",
            "--account",
            ACCOUNT,
        ],
    )
    .await;
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let out = stdout(&o);
    assert!(out.starts_with("USERID    ERRCODE  RESULT\n"), "{out}");
    assert!(out.contains("ghost-1   60111    userid not found"), "{out}");
    assert!(out.contains("added 2 of 3 userid(s) in 1 call(s)"), "{out}");
    let line = stderr_line(&o);
    assert!(
        line.contains("kf/servicer/add: 1 of 3 failed: errcode 60111 ×1 (userid not found)"),
        "{line}"
    );

    // A platform errcode: exit 1, api, errcode and errmsg on one line; --json still prints.
    let o = wxdispatch(
        &config,
        &[
            "kf",
            "servicer",
            "remove",
            "wkNope",
            "zhangsan",
            "--account",
            ACCOUNT,
            "--json",
            "--yes",
        ],
    )
    .await;
    assert_eq!(o.status.code(), Some(1));
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["error"]["errcode"], 95000);
    assert_eq!(v["calls"], 1);
    let line = stderr_line(&o);
    assert!(
        line.starts_with(
            "error: kf/servicer/del: errcode 95000 (invalid_open_kfid): invalid open_kfid"
        ),
        "{line}"
    );

    // session transfer prints the msg_code.
    env.sim().customer_message(ACCOUNT, KFID, "wmZed", "hi");
    let o = wxdispatch(
        &config,
        &[
            "kf",
            "session",
            "transfer",
            KFID,
            "wmZed",
            "--state",
            "2",
            "--account",
            ACCOUNT,
        ],
    )
    .await;
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let out = stdout(&o);
    assert!(out.contains("moved 0 → 2 (new → queued)"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("msg_code  ") && l.len() > 12),
        "{out}"
    );
    // The binary used the token the library would: one gettoken for all runs.
    assert_eq!(gettokens(&env), 1);
    env.cleanup().await;
}
