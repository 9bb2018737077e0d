//! The runners of `wxdispatch kf …`: validate, connect, call, print a table or one JSON
//! document.

use std::io::Write;

use serde::Serialize;
use serde_json::{Value, json};

use crate::config::Config;
use crate::domain::service_state::name_of;
use crate::platform::kf::{
    BatchOutcome, KfClient, KfError, UserResult, default_open_kfid, one_line, stats_range,
    wecom_account, wecom_today, wecom_tz,
};
use crate::store::Store;

use super::args::{AccountCmd, CustomerCmd, KfArgs, KfCommand, ServicerCmd, SessionCmd, StatsCmd};

impl KfClient {
    /// The config's account `name`, with the config's database (tokens) and HTTP settings.
    /// Here rather than in [`crate::platform::kf`]: opening the Postgres token store is the
    /// wiring of a command, and the platform layer knows only a
    /// [`TokenStore`](crate::platform::TokenStore).
    pub async fn connect(cfg: &Config, name: &str) -> Result<Self, KfError> {
        let account = wecom_account(cfg, name)?;
        let http =
            crate::platform::http_client(cfg).map_err(|e| KfError::Setup(format!("{e:#}")))?;
        let store = Store::connect(cfg)
            .await
            .map_err(|e| KfError::Setup(format!("token store: {e:#}")))?;
        Self::new(account, http, store)
    }
}

/// Run a `wxdispatch kf …` command: validate, connect, call, print. Errors are [`KfError`]s
/// (wrapped in anyhow only for output failures).
pub async fn run(cfg: Config, args: KfArgs) -> anyhow::Result<()> {
    let cmd = args.command;
    let common = cmd.common().clone();
    let account = wecom_account(&cfg, &common.account)?;
    cmd.validate(account)?;
    if let Some((what, yes)) = cmd.destructive()
        && !crate::cli::confirm::confirm(&what, yes)?
    {
        crate::cli::output::note("nothing changed");
        return Ok(());
    }
    let client = KfClient::connect(&cfg, &common.account).await?;
    let mut out = std::io::stdout().lock();
    let json = common.json;
    match cmd {
        KfCommand::Account(c) => account_cmd(&client, c, json, &mut out).await,
        KfCommand::Servicer(c) => servicer_cmd(&client, c, json, &mut out).await,
        KfCommand::Customer(CustomerCmd::Get {
            external_userids,
            with_context,
            ..
        }) => {
            let o = client.customer_get(&external_userids, with_context).await?;
            if json {
                print_json(&mut out, &batch_json(&o)?)?;
            } else {
                let rows: Vec<Vec<String>> = o
                    .done
                    .customer_list
                    .iter()
                    .map(|c| {
                        vec![
                            c.external_userid.clone(),
                            c.nickname.clone(),
                            gender_name(c.gender).into(),
                            dash(&c.unionid),
                        ]
                    })
                    .collect();
                if rows.is_empty() {
                    writeln!(out, "no customers found")?;
                } else {
                    write_table(
                        &mut out,
                        &["EXTERNAL_USERID", "NICKNAME", "GENDER", "UNIONID"],
                        &rows,
                    )?;
                }
                let bad = &o.done.invalid_external_userid;
                if !bad.is_empty() {
                    writeln!(
                        out,
                        "invalid external_userid ({}): {}",
                        bad.len(),
                        bad.join(", ")
                    )?;
                }
                write_not_attempted(&mut out, &o.not_attempted)?;
            }
            out.flush()?;
            finish_batch(o.error)
        }
        KfCommand::Session(c) => session_cmd(&client, c, json, &mut out).await,
        KfCommand::Stats(c) => stats_cmd(&client, c, json, &mut out).await,
    }
}

async fn account_cmd(
    client: &KfClient,
    c: AccountCmd,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    match c {
        AccountCmd::List { .. } => {
            let list = client.account_list().await?;
            if json {
                print_json(out, &json!({ "account_list": list }))?;
            } else if list.is_empty() {
                writeln!(out, "no kf accounts")?;
            } else {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|a| {
                        vec![
                            a.open_kfid.clone(),
                            a.name.clone(),
                            a.manage_privilege
                                .map_or("-", |p| if p { "yes" } else { "no" })
                                .into(),
                            dash(&a.avatar),
                        ]
                    })
                    .collect();
                write_table(out, &["OPEN_KFID", "NAME", "MANAGE", "AVATAR"], &rows)?;
            }
        }
        AccountCmd::Add { name, media_id, .. } => {
            let k = client.account_add(&name, &media_id).await?;
            if json {
                print_json(out, &json!({"open_kfid": k, "name": name}))?;
            } else {
                writeln!(out, "{k}")?;
            }
        }
        AccountCmd::Update {
            open_kfid,
            name,
            media_id,
            ..
        } => {
            client
                .account_update(&open_kfid, name.as_deref(), media_id.as_deref())
                .await?;
            if json {
                print_json(out, &json!({"open_kfid": open_kfid, "updated": true}))?;
            } else {
                writeln!(out, "updated {open_kfid}")?;
            }
        }
        AccountCmd::Delete { open_kfid, .. } => {
            client.account_delete(&open_kfid).await?;
            if json {
                print_json(out, &json!({"open_kfid": open_kfid, "deleted": true}))?;
            } else {
                writeln!(out, "deleted {open_kfid}")?;
            }
        }
        AccountCmd::Link {
            open_kfid, scene, ..
        } => {
            let url = client.account_link(&open_kfid, scene.as_deref()).await?;
            if json {
                print_json(out, &json!({"open_kfid": open_kfid, "url": url}))?;
            } else {
                writeln!(out, "{url}")?;
            }
        }
    }
    out.flush()?;
    Ok(())
}

/// `kf servicer list`: the table of a kf account's servicers.
async fn servicer_list_cmd(
    client: &KfClient,
    open_kfid: &str,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let list = client.servicer_list(open_kfid).await?;
    if json {
        print_json(out, &json!({"open_kfid": open_kfid, "servicer_list": list}))?;
    } else if list.is_empty() {
        writeln!(out, "no servicers on {open_kfid}")?;
    } else {
        let rows: Vec<Vec<String>> = list
            .iter()
            .map(|s| {
                vec![
                    s.userid.clone().unwrap_or_else(|| "-".into()),
                    s.department_id.map_or("-".into(), |d| d.to_string()),
                    match s.status {
                        Some(0) => "receiving".into(),
                        Some(1) => "stopped".into(),
                        Some(n) => n.to_string(),
                        None => "-".into(),
                    },
                ]
            })
            .collect();
        write_table(out, &["USERID", "DEPARTMENT", "STATUS"], &rows)?;
    }
    out.flush()?;
    Ok(())
}

async fn servicer_cmd(
    client: &KfClient,
    c: ServicerCmd,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let (o, verb) = match c {
        ServicerCmd::List { open_kfid, .. } => {
            return servicer_list_cmd(client, &open_kfid, json, out).await;
        }
        ServicerCmd::Add {
            open_kfid, userids, ..
        } => (client.servicer_add(&open_kfid, &userids).await?, "added"),
        ServicerCmd::Remove {
            open_kfid, userids, ..
        } => (
            client.servicer_remove(&open_kfid, &userids).await?,
            "removed",
        ),
    };
    let results = &o.done.result_list;
    let failed: Vec<&UserResult> = results.iter().filter(|r| r.errcode != 0).collect();
    if json {
        print_json(out, &batch_json(&o)?)?;
    } else {
        let rows: Vec<Vec<String>> = results
            .iter()
            .map(|r| {
                vec![
                    r.userid.clone(),
                    r.errcode.to_string(),
                    dash(&one_line(&r.errmsg)),
                ]
            })
            .collect();
        if !rows.is_empty() {
            write_table(out, &["USERID", "ERRCODE", "RESULT"], &rows)?;
        }
        writeln!(
            out,
            "{verb} {} of {} userid(s) in {} call(s)",
            results.len() - failed.len(),
            results.len() + o.not_attempted.len(),
            o.calls
        )?;
        write_not_attempted(out, &o.not_attempted)?;
    }
    out.flush()?;
    let api = if verb == "added" {
        "kf/servicer/add"
    } else {
        "kf/servicer/del"
    };
    finish_batch(o.error)?;
    if !failed.is_empty() {
        return Err(KfError::PartlyFailed {
            api,
            failed: failed.len(),
            total: results.len(),
            summary: summarize(&failed),
        }
        .into());
    }
    Ok(())
}

async fn session_cmd(
    client: &KfClient,
    c: SessionCmd,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    match c {
        SessionCmd::Get {
            open_kfid,
            external_userid,
            ..
        } => {
            let s = client.session_get(&open_kfid, &external_userid).await?;
            if json {
                print_json(out, &serde_json::to_value(&s)?)?;
            } else {
                writeln!(out, "state     {} ({})", s.service_state, s.state_name)?;
                writeln!(
                    out,
                    "servicer  {}",
                    s.servicer_userid.as_deref().unwrap_or("-")
                )?;
            }
        }
        SessionCmd::Transfer {
            open_kfid,
            external_userid,
            state,
            servicer,
            ..
        } => {
            let t = client
                .session_transfer(&open_kfid, &external_userid, state, servicer.as_deref())
                .await?;
            if json {
                print_json(out, &serde_json::to_value(&t)?)?;
            } else {
                writeln!(
                    out,
                    "moved {} → {} ({} → {}){}",
                    t.from,
                    t.to,
                    name_of(t.from),
                    name_of(t.to),
                    t.servicer_userid
                        .as_deref()
                        .map(|s| format!(", servicer {s}"))
                        .unwrap_or_default()
                )?;
                writeln!(
                    out,
                    "msg_code  {}",
                    t.msg_code
                        .as_deref()
                        .unwrap_or("- (none issued for this move)")
                )?;
            }
        }
    }
    out.flush()?;
    Ok(())
}

/// The columns the tables show (everything is in `--json`).
const CORP_COLUMNS: [&str; 6] = [
    "session_cnt",
    "customer_cnt",
    "customer_msg_cnt",
    "ai_session_reply_cnt",
    "ai_transfer_rate",
    "msg_rejected_customer_cnt",
];
const SERVICER_COLUMNS: [&str; 6] = [
    "session_cnt",
    "customer_cnt",
    "customer_msg_cnt",
    "reply_rate",
    "first_reply_average_sec",
    "satisfied_rate",
];

async fn stats_cmd(
    client: &KfClient,
    c: StatsCmd,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let (flags, servicer) = match &c {
        StatsCmd::Corp { range, .. } => (range, None),
        StatsCmd::Servicer {
            range, servicer, ..
        } => (range, servicer.as_deref()),
    };
    let range = stats_range(&flags.from, &flags.to, wecom_today())?;
    let kfid = default_open_kfid(client.account(), flags.open_kfid.as_deref())?;
    let (days, columns) = match c {
        StatsCmd::Corp { .. } => (client.stats_corp(&kfid, &range).await?, CORP_COLUMNS),
        StatsCmd::Servicer { .. } => (
            client.stats_servicer(&kfid, servicer, &range).await?,
            SERVICER_COLUMNS,
        ),
    };
    if json {
        print_json(
            out,
            &json!({
                "open_kfid": kfid,
                "servicer_userid": servicer,
                "range": range,
                "statistic_list": days,
            }),
        )?;
    } else if days.is_empty() {
        writeln!(out, "no statistics for {}..{}", range.from, range.to)?;
    } else {
        let mut head = vec!["DATE"];
        head.extend(columns);
        let rows: Vec<Vec<String>> = days
            .iter()
            .map(|d| {
                let date = chrono::DateTime::from_timestamp(d.stat_time, 0)
                    .map(|t| t.with_timezone(&wecom_tz()).date_naive().to_string())
                    .unwrap_or_else(|| d.stat_time.to_string());
                let mut row = vec![date];
                row.extend(
                    columns
                        .iter()
                        .map(|k| d.statistic.get(*k).map_or("-".into(), fmt_number)),
                );
                row
            })
            .collect();
        write_table(out, &head, &rows)?;
    }
    out.flush()?;
    Ok(())
}

fn fmt_number(v: &Value) -> String {
    match (v.as_i64(), v.as_f64()) {
        (Some(i), _) => i.to_string(),
        (None, Some(f)) => format!("{f:.2}"),
        _ => v.to_string(),
    }
}

fn gender_name(g: i64) -> &'static str {
    match g {
        1 => "male",
        2 => "female",
        _ => "-",
    }
}

fn dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_owned()
    }
}

/// `60111 ×2 (userid not found), 40058 ×1 (…)`.
fn summarize(failed: &[&UserResult]) -> String {
    let mut by_code: std::collections::BTreeMap<i64, (usize, &str)> = Default::default();
    for r in failed {
        by_code.entry(r.errcode).or_insert((0, r.errmsg.as_str())).0 += 1;
    }
    by_code
        .into_iter()
        .map(|(c, (n, m))| format!("errcode {c} ×{n} ({})", one_line(m)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn batch_json<T: Serialize>(o: &BatchOutcome<T>) -> anyhow::Result<Value> {
    let mut v = serde_json::to_value(o)?;
    if let (Some(e), Some(obj)) = (error_json(o), v.as_object_mut()) {
        obj.insert("error".into(), e);
    }
    Ok(v)
}

fn finish_batch(error: Option<KfError>) -> anyhow::Result<()> {
    match error {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

fn write_not_attempted(out: &mut impl Write, ids: &[String]) -> std::io::Result<()> {
    if !ids.is_empty() {
        writeln!(
            out,
            "not sent after the failure ({}): {}",
            ids.len(),
            ids.join(", ")
        )?;
    }
    Ok(())
}

fn print_json(out: &mut impl Write, v: &Value) -> std::io::Result<()> {
    writeln!(out, "{v}")
}

/// The CLI's one table printer ([`crate::cli::table`]: columns padded to their widest cell in
/// terminal columns, East Asian wide characters — kf names and nicknames are often Chinese —
/// counting two).
fn write_table(out: &mut impl Write, head: &[&str], rows: &[Vec<String>]) -> std::io::Result<()> {
    let mut t = crate::cli::table::Table::new(head.iter().copied());
    for r in rows {
        t.row(r.iter().map(String::as_str));
    }
    t.write_to(out)
}

/// The failed call's error as JSON (`{api, errcode?, errmsg}`), for `--json`.
fn error_json<T: Serialize>(o: &BatchOutcome<T>) -> Option<Value> {
    o.error.as_ref().map(|e| match e {
        KfError::Platform { api, code, msg, .. } => {
            json!({"api": api, "errcode": code, "errmsg": msg})
        }
        other => json!({"errmsg": other.to_string()}),
    })
}

#[cfg(test)]
#[path = "run_tests.rs"]
mod tests;
