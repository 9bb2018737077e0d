//! The routes of the kf administration APIs and their `/_sim/kf/…` admin endpoints.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use super::accounts::*;
use super::model::*;
use super::statistics::*;
use crate::tools::simulate::reply::ApiErr;
use crate::tools::simulate::respond::finish;
use crate::tools::simulate::state::SimState;
use crate::tools::simulate::util::lock;

async fn serve(
    kf: Arc<KfAdmin>,
    api: KfApi,
    query: Option<String>,
    raw: &[u8],
    process: fn(&KfAdmin, &Req) -> Result<Value, ApiErr>,
) -> Response {
    *lock(&kf.calls).entry(api).or_insert(0) += 1;
    let (acct, reply) = match prelude(&kf, api, query.as_deref(), raw) {
        Ok((account, req)) => (Some(account), process(&kf, &req).into()),
        Err(o) => o,
    };
    finish(&kf.sim, acct, reply).await
}

// ------------------------------------------------------------------------------ routes

type Kf = State<Arc<KfAdmin>>;

macro_rules! handler {
    ($name:ident, $api:expr, $process:expr) => {
        async fn $name(State(kf): Kf, RawQuery(q): RawQuery, body: Bytes) -> Response {
            serve(kf, $api, q, &body, $process).await
        }
    };
}

handler!(h_account_list, KfApi::AccountList, account_list);
handler!(h_account_add, KfApi::AccountAdd, account_add);
handler!(h_account_update, KfApi::AccountUpdate, account_update);
handler!(h_account_del, KfApi::AccountDel, account_del);
handler!(h_add_contact_way, KfApi::AddContactWay, add_contact_way);
handler!(h_servicer_list, KfApi::ServicerList, servicer_list);
handler!(h_servicer_add, KfApi::ServicerAdd, servicer_add);
handler!(h_servicer_del, KfApi::ServicerDel, servicer_del);
handler!(
    h_customer_batchget,
    KfApi::CustomerBatchget,
    customer_batchget
);
handler!(h_corp_statistic, KfApi::CorpStatistic, corp_statistic);
handler!(
    h_servicer_statistic,
    KfApi::ServicerStatistic,
    servicer_statistic
);

/// The kf administration APIs and their admin endpoints, with their own state (built from
/// `sim`'s accounts); merge into the simulator's router.
pub(crate) fn routes(sim: Arc<SimState>) -> Router<Arc<SimState>> {
    let kf = Arc::new(KfAdmin::new(sim));
    Router::new()
        .route(
            "/cgi-bin/kf/account/list",
            post(h_account_list).get(h_account_list),
        )
        .route("/cgi-bin/kf/account/add", post(h_account_add))
        .route("/cgi-bin/kf/account/update", post(h_account_update))
        .route("/cgi-bin/kf/account/del", post(h_account_del))
        .route("/cgi-bin/kf/add_contact_way", post(h_add_contact_way))
        .route("/cgi-bin/kf/servicer/list", get(h_servicer_list))
        .route("/cgi-bin/kf/servicer/add", post(h_servicer_add))
        .route("/cgi-bin/kf/servicer/del", post(h_servicer_del))
        .route("/cgi-bin/kf/customer/batchget", post(h_customer_batchget))
        .route("/cgi-bin/kf/get_corp_statistic", post(h_corp_statistic))
        .route(
            "/cgi-bin/kf/get_servicer_statistic",
            post(h_servicer_statistic),
        )
        .route("/_sim/kf/calls", get(admin_calls))
        .route("/_sim/kf/reset", post(admin_reset))
        .route("/_sim/kf/script", post(admin_script))
        .route("/_sim/kf/state", get(admin_state))
        .with_state(kf)
}

async fn admin_calls(State(kf): Kf) -> Response {
    let calls = lock(&kf.calls);
    let map: BTreeMap<&str, u64> = KfApi::ALL
        .iter()
        .map(|a| (a.name(), calls.get(a).copied().unwrap_or(0)))
        .collect();
    Json(json!({ "calls": map })).into_response()
}

async fn admin_reset(State(kf): Kf) -> Response {
    lock(&kf.calls).clear();
    lock(&kf.scripts).clear();
    Json(json!({"ok": true})).into_response()
}

#[derive(Deserialize)]
struct ScriptReq {
    api: String,
    errcodes: Vec<i64>,
}

async fn admin_script(State(kf): Kf, body: Bytes) -> Response {
    let r: ScriptReq = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": format!("invalid body: {e}")})),
            )
                .into_response();
        }
    };
    let Some(api) = KfApi::from_name(&r.api) else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": format!("unknown api '{}'", r.api)})),
        )
            .into_response();
    };
    lock(&kf.scripts).entry(api).or_default().extend(r.errcodes);
    Json(json!({"ok": true})).into_response()
}

async fn admin_state(State(kf): Kf) -> Response {
    let books = lock(&kf.books);
    let corps: Vec<Value> = books
        .iter()
        .enumerate()
        .map(|(g, b)| {
            json!({
                "corpid": kf.sim.corps[g].corpid,
                "accounts": b.accounts.iter().map(|a| json!({
                    "open_kfid": a.open_kfid,
                    "name": a.name,
                    "media_id": a.media_id,
                    "servicers": a.servicers.keys().collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    Json(json!({ "corps": corps })).into_response()
}
