//! The chatbot send path (WeChat Dialogue Open Platform): WXBizMsgCrypt-encrypted XML in
//! `{"encrypt": …}`, POSTed to `openapi/<api>/<TOKEN>`.

use bytes::Bytes;
use serde_json::Value;

use crate::crypto::MsgCrypt;
use crate::domain::chatbot_state::{ChatbotState, StateAnswerError};
use crate::domain::job::{self, Job, JobKind};
use crate::policy::CallResult;

use super::client::Platform;
use super::http::{call, json_of, post_json};

impl Platform {
    pub(super) async fn chatbot(&self, job: &Job) -> CallResult {
        let Some(crypt) = &self.crypt else {
            return CallResult::Errcode {
                code: 1013,
                msg: "no encoding_aes_key configured".into(),
            };
        };
        // `<appid>` is the OA / mini-program appid (job, else `oa_appid`); the platform APPID
        // is only the receive id `crypt` encrypts with.
        let appid = job::chatbot_appid(job, &self.account);
        let (path, xml) = match &job.kind {
            JobKind::Transfer(tr) => (
                "kefustate/change",
                job::chatbot_kefustate_change_xml(
                    appid,
                    &job.to,
                    tr.kefustate.as_deref().unwrap_or("off"),
                    tr.expires,
                ),
            ),
            _ => ("sendmsg", job::chatbot_sendmsg_xml(job, &self.account)),
        };
        let (res, _) = self.chatbot_call(crypt, path, &xml).await;
        res
    }

    async fn chatbot_call(&self, crypt: &MsgCrypt, path: &str, xml: &str) -> (CallResult, Bytes) {
        let token = self.account.token.expose();
        let url = match self.url(path, token, |base| {
            reqwest::Url::parse(&format!("{base}/openapi/{path}/{token}"))
        }) {
            Ok(u) => u,
            Err(res) => return (res, Bytes::new()),
        };
        // `{"encrypt": "<base64>"}`: the base64 alphabet needs no JSON escaping.
        let encrypted = crypt.encrypt(xml.as_bytes());
        let mut body = Vec::with_capacity(encrypted.len() + 16);
        body.extend_from_slice(b"{\"encrypt\":\"");
        body.extend_from_slice(encrypted.as_bytes());
        body.extend_from_slice(b"\"}");
        call(post_json(&self.http, url, body.into())).await
    }

    /// Chatbot `kefustate/get` with `type=all`: the job's conversation's state. `<appid>` as
    /// for the job's sendmsg ([`job::chatbot_appid`]).
    pub async fn chatbot_state(&self, job: &Job) -> Result<ChatbotState, KefuStateError> {
        self.chatbot_state_of(job::chatbot_appid(job, &self.account), &job.to)
            .await
    }

    /// Chatbot `kefustate/get` with `type=all` for `openid` (with `appid` as `<appid>` when
    /// given): the four-state `status`, else the on/off `kefustate`. An account without an
    /// EncodingAESKey cannot ask, and is taken as `asking` (nothing gates its bot).
    pub async fn chatbot_state_of(
        &self,
        appid: Option<&str>,
        openid: &str,
    ) -> Result<ChatbotState, KefuStateError> {
        let Some(crypt) = &self.crypt else {
            return Ok(ChatbotState::Asking);
        };
        let (res, v) = self
            .chatbot_call(
                crypt,
                "kefustate/get",
                &job::chatbot_kefustate_get_xml(appid, openid),
            )
            .await;
        match res {
            CallResult::Ok { .. } => {
                let v = json_of(&v);
                let word = |k: &str| v.get(k).and_then(Value::as_str);
                Ok(ChatbotState::from_answer(
                    word("kefustate"),
                    word("status"),
                )?)
            }
            other => Err(KefuStateError::Call(other)),
        }
    }
}

/// Why `kefustate/get` gave no state.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum KefuStateError {
    /// The call failed (HTTP, transport, errcode): judge it like a failed send.
    #[error("kefustate/get failed: {0:?}")]
    Call(CallResult),
    /// The platform answered, but with a state wxdispatch does not know.
    #[error(transparent)]
    Answer(#[from] StateAnswerError),
}
