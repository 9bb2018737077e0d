//! The WeCom send path (`cgi-bin/kf/…`) and WeCom's token protocol: every business call
//! carries the access token, and a stale one is invalidated, refreshed and retried once.

use bytes::Bytes;
use serde_json::{Value, json};

use crate::config::Channel;
use crate::domain::job::{self, Job, JobKind, Recall};
use crate::policy::{self, Action, Api, CallResult};

use super::client::Platform;
use super::http::{call, json_of, post_json};
use super::token::TokenManager;

impl Platform {
    /// WeCom `service_state/get`: the session state (0 new, 1 bot, 2 queued, 3 human, 4 ended).
    pub async fn wecom_service_state(
        &self,
        open_kfid: &str,
        external_userid: &str,
    ) -> Result<(i64, Option<String>), (CallResult, Api)> {
        let Some(tokens) = &self.tokens else {
            return Ok((0, None));
        };
        let body = json!({ "open_kfid": open_kfid, "external_userid": external_userid });
        match self.wecom_call(tokens, "kf/service_state/get", &body).await {
            ((CallResult::Ok { .. }, _), v) => Ok((
                v.get("service_state").and_then(Value::as_i64).unwrap_or(0),
                v.get("servicer_userid")
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned),
            )),
            ((other, api), _) => Err((other, api)),
        }
    }

    pub(super) async fn wecom(&self, job: &Job) -> (CallResult, Api) {
        let Some(tokens) = &self.tokens else {
            return (
                CallResult::Errcode {
                    code: 40013,
                    msg: "no corpid".into(),
                },
                Api::GetToken,
            );
        };
        let (path, body) = match &job.kind {
            JobKind::EventReply { .. } => ("kf/send_msg_on_event", job::wecom_event_body(job)),
            JobKind::Transfer(tr) => {
                let mut b = json!({
                    "open_kfid": job.open_kfid.as_deref().unwrap_or(""),
                    "external_userid": job.to,
                    "service_state": tr.service_state.unwrap_or(1),
                });
                if let Some(s) = &tr.servicer_userid {
                    b["servicer_userid"] = json!(s);
                }
                ("kf/service_state/trans", b.to_string().into_bytes())
            }
            JobKind::Recall(r) => match recall_body(job, r) {
                Some(b) => ("kf/recall_msg", b),
                None => return no_recall_msgid(),
            },
            _ => ("kf/send_msg", job::wecom_send_body(job)),
        };
        self.wecom_post(tokens, path, body.into()).await.0
    }

    /// POST a WeCom business API with the token protocol (see `wecom_request`),
    /// JSON in and out.
    pub async fn wecom_call(
        &self,
        tokens: &TokenManager,
        path: &str,
        body: &Value,
    ) -> ((CallResult, Api), Value) {
        let (res, bytes) = self
            .wecom_post(tokens, path, body.to_string().into_bytes().into())
            .await;
        (res, json_of(&bytes))
    }

    /// POST a serialized body to a WeCom business API with the token protocol.
    async fn wecom_post(
        &self,
        tokens: &TokenManager,
        path: &str,
        body: Bytes,
    ) -> ((CallResult, Api), Bytes) {
        // Bytes: the retry after a refresh sends the same buffer again, uncopied.
        self.wecom_request(tokens, path, |url| post_json(&self.http, url, body.clone()))
            .await
    }

    /// GET a WeCom business API (`?access_token=…&query…`) with the token protocol, JSON out.
    pub async fn wecom_get(
        &self,
        tokens: &TokenManager,
        path: &str,
        query: &[(&str, &str)],
    ) -> ((CallResult, Api), Value) {
        let (res, bytes) = self
            .wecom_request(tokens, path, |url| self.http.get(url).query(query))
            .await;
        (res, json_of(&bytes))
    }

    /// A WeCom business call with the token protocol: `request` makes the request from the
    /// API's URL with the access token; on 40014/42001/41001/40001 invalidate exactly the
    /// generation used, refresh once, retry once.
    async fn wecom_request(
        &self,
        tokens: &TokenManager,
        path: &str,
        request: impl Fn(reqwest::Url) -> reqwest::RequestBuilder,
    ) -> ((CallResult, Api), Bytes) {
        let mut refreshed = false;
        loop {
            let tok = match tokens.get().await {
                Ok(t) => t,
                Err(res) => return ((res, Api::GetToken), Bytes::new()),
            };
            let url = match self.url(path, &tok.token, |base| {
                let mut u = reqwest::Url::parse(&format!("{base}/cgi-bin/{path}"))
                    .map_err(|e| e.to_string())?;
                u.query_pairs_mut().append_pair("access_token", &tok.token);
                Ok::<_, String>(u)
            }) {
                Ok(u) => u,
                Err(res) => return ((res, Api::Business), Bytes::new()),
            };
            let (res, v) = call(request(url)).await;
            if !refreshed
                && policy::classify(Channel::Wecom, Api::Business, &res) == Action::RefreshToken
            {
                refreshed = true;
                Box::pin(tokens.invalidate(tok.generation)).await;
                continue;
            }
            return ((res, Api::Business), v);
        }
    }
}

/// The kf/recall_msg body `{open_kfid, msgid}`: the msgid the platform gave the target
/// (`None` until the lane has filled it in from the target's row).
fn recall_body(job: &Job, r: &Recall) -> Option<Vec<u8>> {
    let msgid = r.msgid.as_deref()?;
    let body = json!({ "open_kfid": job.open_kfid.as_deref().unwrap_or(""), "msgid": msgid });
    Some(body.to_string().into_bytes())
}

/// A recall whose target msgid the lane did not fill in (a bug, never the platform's answer):
/// refused as a bad request (permanent), without calling the platform.
fn no_recall_msgid() -> (CallResult, Api) {
    (
        CallResult::Errcode {
            code: 40058,
            msg: "recall: the target's msgid was not resolved; nothing was sent".into(),
        },
        Api::Business,
    )
}
