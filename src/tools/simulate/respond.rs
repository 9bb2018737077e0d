//! The last step of every handler: a [`Reply`] counted against its account and turned into
//! an HTTP response (a held request waits here, releasing on shutdown).

use std::sync::Arc;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::reply::Reply;
use super::state::SimState;

/// Count the reply against `account` (an index, `None` when no account could be identified)
/// and turn it into a response.
pub(crate) async fn finish(st: &Arc<SimState>, account: Option<usize>, reply: Reply) -> Response {
    match reply {
        Reply::Ok(v) => Json(v).into_response(),
        Reply::Err(e) => {
            st.count_error(account, &e.code.to_string());
            Json(json!({"errcode": e.code, "errmsg": e.errmsg()})).into_response()
        }
        Reply::Http(status) => {
            st.count_error(account, &format!("http{}", status.as_u16()));
            status.into_response()
        }
        Reply::Hold => {
            st.count_error(account, "timeout");
            let hold = st.faults().hold_for();
            tokio::select! {
                _ = tokio::time::sleep(hold) => {}
                _ = st.shutdown.cancelled() => {}
            }
            StatusCode::GATEWAY_TIMEOUT.into_response()
        }
    }
}
