//! The admin API under `/_sim`, for tests and users running the simulator as a process.
//! Bodies are JSON; errors are HTTP 400 / 404 with `{"error": "..."}`.
//!
//! | endpoint | does |
//! |---|---|
//! | `GET /_sim/accepted[?account=&since_seq=&limit=]` | accepted requests (JSON array of `Accepted`), `seq > since_seq` |
//! | `GET /_sim/stats` | accepted counts per account, errcode counts, gettoken calls, duplicate msgids, faults |
//! | `GET /_sim/faults`, `PUT /_sim/faults` | read / replace the fault rates (`Faults` JSON) |
//! | `POST /_sim/tokens/expire` | every issued access token expires (→ 42001) |
//! | `POST /_sim/tokens/revoke` | every issued access token is forgotten (→ 40014) |
//! | `POST /_sim/script` `{account, errcodes, api?}` | the account's next write requests (or next `api` requests) get these errcodes |
//! | `POST /_sim/reset` | forget accepted requests, counters and scripts |
//! | `POST /_sim/reset_conversations` | forget sessions, kefustates, inbound logs, codes |
//! | `POST /_sim/wecom/customer_message` `{account, open_kfid, external_userid, text}` | → `{msgid, token}` |
//! | `POST /_sim/wecom/enter_session` `{account, open_kfid, external_userid}` | → `{welcome_code}` |
//! | `POST /_sim/wecom/event` `{account, open_kfid, event}` | append an event → `{msgid}` |
//! | `POST /_sim/wecom/service_state` `{account, open_kfid, external_userid, service_state, servicer_userid?}` | set a session's state |
//! | `GET /_sim/wecom/service_state?open_kfid=&external_userid=` | → `{service_state, servicer_userid}` |
//! | `POST /_sim/wecom/empty_page` `{account, open_kfid}` | the next sync_msg page is empty with has_more = 1 |
//! | `POST /_sim/wecom/callback` `{account, open_kfid, token}` | → `{query, body}`: a signed, encrypted kf_msg_or_event callback |
//! | `POST /_sim/wecom/callback_token` `{account, open_kfid}` | → `{token}`: a fresh sync_msg Token |
//! | `POST /_sim/chatbot/kefustate` `{account, openid, on}` or `{account, openid, status, expires?}` | set a chatbot user's kefustate, or one of the four states (reverting to `asking` after `expires` s, default 1800) |
//! | `GET /_sim/chatbot/kefustate?account=&openid=` | → `{kefustate: "on"/"off", status}` |

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::reply::query_param;
use super::state::SimState;
use super::{Accepted, Faults};

type St = State<Arc<SimState>>;

pub(crate) fn routes() -> Router<Arc<SimState>> {
    Router::new()
        .route("/_sim/accepted", get(accepted))
        .route("/_sim/stats", get(stats))
        .route("/_sim/faults", get(get_faults).put(put_faults))
        .route("/_sim/tokens/expire", post(expire))
        .route("/_sim/tokens/revoke", post(revoke))
        .route("/_sim/script", post(script))
        .route("/_sim/reset", post(reset))
        .route("/_sim/reset_conversations", post(reset_conversations))
        .route("/_sim/wecom/customer_message", post(customer_message))
        .route("/_sim/wecom/enter_session", post(enter_session))
        .route("/_sim/wecom/event", post(event))
        .route(
            "/_sim/wecom/service_state",
            post(set_service_state).get(get_service_state),
        )
        .route("/_sim/wecom/empty_page", post(empty_page))
        .route("/_sim/wecom/callback", post(callback))
        .route("/_sim/wecom/callback_token", post(callback_token))
        .route(
            "/_sim/chatbot/kefustate",
            post(set_kefustate).get(get_kefustate),
        )
}

/// An admin request that cannot be served: 400 or 404 with `{"error": …}`.
struct AdminError(StatusCode, String);

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"error": self.1}))).into_response()
    }
}

type Answer = Result<Response, AdminError>;

fn bad(msg: impl Into<String>) -> AdminError {
    AdminError(StatusCode::BAD_REQUEST, msg.into())
}

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, AdminError> {
    serde_json::from_slice(body).map_err(|e| bad(format!("invalid body: {e}")))
}

fn known(st: &SimState, account: &str) -> Result<(), AdminError> {
    match st.account_index(account) {
        Some(_) => Ok(()),
        None => Err(AdminError(
            StatusCode::NOT_FOUND,
            format!("unknown account '{account}'"),
        )),
    }
}

fn done() -> Answer {
    Ok(Json(json!({"ok": true})).into_response())
}

fn reply(v: impl serde::Serialize) -> Answer {
    Ok(Json(v).into_response())
}

async fn accepted(State(st): St, RawQuery(q): RawQuery) -> Answer {
    let q = q.as_deref();
    let account = query_param(q, "account");
    let num = |name: &str| -> Result<Option<u64>, AdminError> {
        match query_param(q, name) {
            None => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| bad(format!("{name} must be an integer"))),
        }
    };
    let since = num("since_seq")?.unwrap_or(0);
    let limit = num("limit")?.map_or(usize::MAX, |l| usize::try_from(l).unwrap_or(usize::MAX));
    // Only Arcs are copied under the lock; conversion and serialization happen outside it.
    let records = st.records_since(account.as_deref(), since, limit);
    let out: Vec<Accepted> = records.iter().map(|r| st.to_accepted(r)).collect();
    reply(out)
}

async fn stats(State(st): St) -> Answer {
    reply(st.stats())
}

async fn get_faults(State(st): St) -> Answer {
    reply(st.faults())
}

async fn put_faults(State(st): St, body: Bytes) -> Answer {
    let f: Faults = parse(&body)?;
    if let Err(e) = f.validate() {
        return Err(bad(e));
    }
    st.set_faults(f.clone());
    reply(f)
}

async fn expire(State(st): St) -> Answer {
    st.expire_tokens();
    done()
}

async fn revoke(State(st): St) -> Answer {
    st.revoke_tokens();
    done()
}

#[derive(Deserialize)]
struct ScriptReq {
    account: String,
    errcodes: Vec<i64>,
    /// Only this API (e.g. `sync_msg`); absent: the account's next write requests.
    #[serde(default)]
    api: Option<String>,
}

async fn script(State(st): St, body: Bytes) -> Answer {
    let r: ScriptReq = parse(&body)?;
    known(&st, &r.account)?;
    match r.api {
        Some(api) => {
            if !st.script_api(&r.account, &api, r.errcodes) {
                return Err(bad(format!("unknown api '{api}'")));
            }
        }
        None => st.script(&r.account, r.errcodes),
    }
    done()
}

async fn reset(State(st): St) -> Answer {
    st.reset();
    done()
}

async fn reset_conversations(State(st): St) -> Answer {
    st.reset_conversations();
    done()
}

#[derive(Deserialize)]
struct CustomerMessage {
    account: String,
    open_kfid: String,
    external_userid: String,
    text: String,
}

async fn customer_message(State(st): St, body: Bytes) -> Answer {
    let r: CustomerMessage = parse(&body)?;
    known(&st, &r.account)?;
    let id = st.customer_message(&r.account, &r.open_kfid, &r.external_userid, &r.text);
    reply(json!({"msgid": id, "token": id}))
}

#[derive(Deserialize)]
struct Conversation {
    account: String,
    open_kfid: String,
    #[serde(default)]
    external_userid: String,
}

async fn enter_session(State(st): St, body: Bytes) -> Answer {
    let r: Conversation = parse(&body)?;
    known(&st, &r.account)?;
    let code = st.enter_session(&r.account, &r.open_kfid, &r.external_userid);
    reply(json!({"welcome_code": code}))
}

#[derive(Deserialize)]
struct EventReq {
    account: String,
    open_kfid: String,
    event: Value,
}

async fn event(State(st): St, body: Bytes) -> Answer {
    let r: EventReq = parse(&body)?;
    known(&st, &r.account)?;
    if !r.event.get("event_type").is_some_and(Value::is_string) {
        return Err(bad("event must be an object with an event_type"));
    }
    let id = st.push_event(&r.account, &r.open_kfid, r.event);
    reply(json!({"msgid": id}))
}

#[derive(Deserialize)]
struct ServiceStateReq {
    account: String,
    open_kfid: String,
    external_userid: String,
    service_state: i64,
    #[serde(default)]
    servicer_userid: Option<String>,
}

async fn set_service_state(State(st): St, body: Bytes) -> Answer {
    let r: ServiceStateReq = parse(&body)?;
    known(&st, &r.account)?;
    if !(0..=4).contains(&r.service_state) {
        return Err(bad("service_state must be 0..=4"));
    }
    st.set_service_state(
        &r.account,
        &r.open_kfid,
        &r.external_userid,
        r.service_state,
        r.servicer_userid.as_deref(),
    );
    done()
}

async fn get_service_state(State(st): St, RawQuery(q): RawQuery) -> Answer {
    let q = q.as_deref();
    let (Some(k), Some(u)) = (
        query_param(q, "open_kfid"),
        query_param(q, "external_userid"),
    ) else {
        return Err(bad("open_kfid and external_userid are required"));
    };
    let (state, servicer) = st.service_state(&k, &u);
    reply(json!({"service_state": state, "servicer_userid": servicer.unwrap_or_default()}))
}

async fn empty_page(State(st): St, body: Bytes) -> Answer {
    let r: Conversation = parse(&body)?;
    known(&st, &r.account)?;
    st.inject_empty_page(&r.account, &r.open_kfid);
    done()
}

#[derive(Deserialize)]
struct CallbackReq {
    account: String,
    open_kfid: String,
    token: String,
}

async fn callback(State(st): St, body: Bytes) -> Answer {
    let r: CallbackReq = parse(&body)?;
    match st.try_callback_request(&r.account, &r.open_kfid, &r.token) {
        Ok((query, body)) => reply(json!({"query": query, "body": body})),
        Err(e) => Err(bad(e)),
    }
}

async fn callback_token(State(st): St, body: Bytes) -> Answer {
    let r: Conversation = parse(&body)?;
    known(&st, &r.account)?;
    reply(json!({"token": st.issue_callback_token(&r.account, &r.open_kfid)}))
}

/// `{account, openid, on}` (kefustate on/off), or `{account, openid, status, expires?}` (one
/// of the four states, reverting to `asking` after `expires` seconds, default 1800).
#[derive(Deserialize)]
struct KefuReq {
    account: String,
    openid: String,
    #[serde(default)]
    on: Option<bool>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    expires: Option<u64>,
}

async fn set_kefustate(State(st): St, body: Bytes) -> Answer {
    let r: KefuReq = parse(&body)?;
    known(&st, &r.account)?;
    match (r.on, r.status.as_deref()) {
        (Some(on), None) => st.set_kefustate(&r.account, &r.openid, on),
        (None, Some(s)) => {
            let expires = r.expires.map(std::time::Duration::from_secs);
            if !st.set_chatbot_state(&r.account, &r.openid, s, expires) {
                return Err(bad(
                    "status must be asking, personserving, complete or needperson",
                ));
            }
        }
        _ => return Err(bad("give either on or status")),
    }
    done()
}

async fn get_kefustate(State(st): St, RawQuery(q): RawQuery) -> Answer {
    let q = q.as_deref();
    let (Some(a), Some(o)) = (query_param(q, "account"), query_param(q, "openid")) else {
        return Err(bad("account and openid are required"));
    };
    let on = st.kefustate(&a, &o);
    reply(json!({"kefustate": if on { "on" } else { "off" }, "status": st.chatbot_state(&a, &o)}))
}
