//! [`KfClient`]: one wecom account's kf administration calls, each validated before it is
//! sent, lists longer than a batch split into calls of at most 100.

use std::collections::HashSet;

use serde::Serialize;
use serde_json::{Value, json};

use crate::config::{AccountConfig, Channel};
use crate::domain::service_state::{name_of, transition_allowed};
use crate::platform::{Platform, TokenStore};

use super::error::{KfError, bad_response, check, invalid};
use super::types::{
    BatchOutcome, Customer, Customers, DayStat, KfAccount, Servicer, ServicerResults, Session,
    Transfer, UserResult,
};
use super::validate::{
    ACCOUNT_PAGE, CUSTOMER_BATCH, MAX_ACCOUNT_PAGES, SERVICER_BATCH, StatsRange,
    validate_external_userid, validate_ids, validate_media_id, validate_name, validate_open_kfid,
    validate_scene, validate_target, validate_userid,
};

/// One wecom account's kf administration client.
#[derive(Debug)]
pub struct KfClient {
    platform: Platform,
}

impl KfClient {
    /// A client for `account` (must be a wecom account), sharing tokens through `tokens`.
    /// (`KfClient::connect`, in `crate::cli::kf`, opens the config's Postgres token store.)
    pub fn new(
        account: &AccountConfig,
        http: reqwest::Client,
        tokens: impl TokenStore + 'static,
    ) -> Result<Self, KfError> {
        if account.channel != Channel::Wecom {
            return Err(invalid(format!(
                "account {}: kf commands need a wecom account",
                account.name
            )));
        }
        Ok(Self {
            platform: Platform::new(account.clone(), http, tokens),
        })
    }

    /// The account this client manages.
    pub fn account(&self) -> &AccountConfig {
        &self.platform.account
    }

    /// POST `api` with the token protocol of [`Platform::wecom_call`].
    async fn post(&self, api: &'static str, body: &Value) -> Result<Value, KfError> {
        let tokens = self
            .platform
            .tokens()
            .ok_or_else(|| invalid("not a wecom account"))?;
        let ((res, which), v) = self.platform.wecom_call(tokens, api, body).await;
        check(api, which, res, v)
    }

    /// GET `api?access_token=…&query…` with the same token protocol (`servicer/list` is the
    /// one GET API here).
    async fn get(&self, api: &'static str, query: &[(&str, &str)]) -> Result<Value, KfError> {
        let tokens = self
            .platform
            .tokens()
            .ok_or_else(|| invalid("not a wecom account"))?;
        let ((res, which), v) = self.platform.wecom_get(tokens, api, query).await;
        check(api, which, res, v)
    }

    /// `kf/account/list`, all pages (94661: `{offset, limit}`, "当获取到的 account_list中的账号
    /// 数量小于 指定的limit 的时候,表示已经没有更多的数据").
    pub async fn account_list(&self) -> Result<Vec<KfAccount>, KfError> {
        const API: &str = "kf/account/list";
        let mut out = Vec::new();
        for page in 0..MAX_ACCOUNT_PAGES {
            let v = self
                .post(
                    API,
                    &json!({"offset": page * ACCOUNT_PAGE, "limit": ACCOUNT_PAGE}),
                )
                .await?;
            let list: Vec<KfAccount> = field(API, &v, "account_list")?;
            let n = list.len();
            out.extend(list);
            if n < ACCOUNT_PAGE {
                break;
            }
        }
        Ok(out)
    }

    /// `kf/account/add` `{name, media_id}` → the new `open_kfid` (94662).
    pub async fn account_add(&self, name: &str, media_id: &str) -> Result<String, KfError> {
        const API: &str = "kf/account/add";
        validate_name(name)?;
        validate_media_id(media_id)?;
        let v = self
            .post(API, &json!({"name": name, "media_id": media_id}))
            .await?;
        match v.get("open_kfid").and_then(Value::as_str) {
            Some(k) if !k.is_empty() => Ok(k.to_owned()),
            _ => Err(bad_response(API, "no open_kfid")),
        }
    }

    /// `kf/account/update` `{open_kfid, name?, media_id?}` (94664); at least one change.
    pub async fn account_update(
        &self,
        open_kfid: &str,
        name: Option<&str>,
        media_id: Option<&str>,
    ) -> Result<(), KfError> {
        validate_open_kfid(open_kfid)?;
        if name.is_none() && media_id.is_none() {
            return Err(invalid("nothing to update: give --name and/or --media-id"));
        }
        let mut body = json!({"open_kfid": open_kfid});
        if let Some(n) = name {
            validate_name(n)?;
            body["name"] = json!(n);
        }
        if let Some(m) = media_id {
            validate_media_id(m)?;
            body["media_id"] = json!(m);
        }
        self.post("kf/account/update", &body).await.map(drop)
    }

    /// `kf/account/del` `{open_kfid}` (94663).
    pub async fn account_delete(&self, open_kfid: &str) -> Result<(), KfError> {
        validate_open_kfid(open_kfid)?;
        self.post("kf/account/del", &json!({"open_kfid": open_kfid}))
            .await
            .map(drop)
    }

    /// `kf/add_contact_way` `{open_kfid, scene?}` → the customer-service URL (94665).
    pub async fn account_link(
        &self,
        open_kfid: &str,
        scene: Option<&str>,
    ) -> Result<String, KfError> {
        const API: &str = "kf/add_contact_way";
        validate_open_kfid(open_kfid)?;
        let mut body = json!({"open_kfid": open_kfid});
        if let Some(s) = scene {
            validate_scene(s)?;
            body["scene"] = json!(s);
        }
        let v = self.post(API, &body).await?;
        match v.get("url").and_then(Value::as_str) {
            Some(u) if !u.is_empty() => Ok(u.to_owned()),
            _ => Err(bad_response(API, "no url")),
        }
    }

    /// GET `kf/servicer/list?open_kfid=` → `servicer_list` (94645).
    pub async fn servicer_list(&self, open_kfid: &str) -> Result<Vec<Servicer>, KfError> {
        const API: &str = "kf/servicer/list";
        validate_open_kfid(open_kfid)?;
        let v = self.get(API, &[("open_kfid", open_kfid)]).await?;
        field(API, &v, "servicer_list")
    }

    /// `kf/servicer/add` in batches of [`SERVICER_BATCH`] (94646).
    pub async fn servicer_add(
        &self,
        open_kfid: &str,
        userids: &[String],
    ) -> Result<BatchOutcome<ServicerResults>, KfError> {
        self.servicer_batch("kf/servicer/add", open_kfid, userids)
            .await
    }

    /// `kf/servicer/del` in batches of [`SERVICER_BATCH`] (94647).
    pub async fn servicer_remove(
        &self,
        open_kfid: &str,
        userids: &[String],
    ) -> Result<BatchOutcome<ServicerResults>, KfError> {
        self.servicer_batch("kf/servicer/del", open_kfid, userids)
            .await
    }

    async fn servicer_batch(
        &self,
        api: &'static str,
        open_kfid: &str,
        userids: &[String],
    ) -> Result<BatchOutcome<ServicerResults>, KfError> {
        validate_open_kfid(open_kfid)?;
        let ids = validate_ids("userid", userids, validate_userid)?;
        Ok(in_batches(
            &ids,
            SERVICER_BATCH,
            |chunk: &[String]| {
                let body = json!({"open_kfid": open_kfid, "userid_list": chunk});
                async move {
                    self.post(api, &body)
                        .await
                        .and_then(|v| field::<Vec<UserResult>>(api, &v, "result_list"))
                }
            },
            |done: &mut ServicerResults, chunk, mut list| {
                // Every userid sent gets a line, even one the platform left out.
                let answered: HashSet<String> = list.iter().map(|r| r.userid.clone()).collect();
                list.extend(
                    chunk
                        .iter()
                        .filter(|u| !answered.contains(*u))
                        .map(|u| UserResult {
                            userid: u.clone(),
                            errcode: -1,
                            errmsg: "no result returned for this userid".into(),
                        }),
                );
                done.result_list.extend(list);
            },
        )
        .await)
    }

    /// `kf/customer/batchget` in batches of [`CUSTOMER_BATCH`] (95159);
    /// `need_enter_session_context` asks for the last session's scene.
    pub async fn customer_get(
        &self,
        external_userids: &[String],
        with_context: bool,
    ) -> Result<BatchOutcome<Customers>, KfError> {
        const API: &str = "kf/customer/batchget";
        let ids = validate_ids(
            "external_userid",
            external_userids,
            validate_external_userid,
        )?;
        Ok(in_batches(
            &ids,
            CUSTOMER_BATCH,
            |chunk: &[String]| {
                let mut body = json!({"external_userid_list": chunk});
                if with_context {
                    body["need_enter_session_context"] = json!(1);
                }
                async move {
                    let v = self.post(API, &body).await?;
                    Ok((
                        field::<Vec<Customer>>(API, &v, "customer_list")?,
                        field::<Vec<String>>(API, &v, "invalid_external_userid")?,
                    ))
                }
            },
            |done: &mut Customers, _, (found, bad)| {
                done.customer_list.extend(found);
                done.invalid_external_userid.extend(bad);
            },
        )
        .await)
    }

    /// `kf/service_state/get` `{open_kfid, external_userid}` → `service_state`,
    /// `servicer_userid` (94669).
    pub async fn session_get(
        &self,
        open_kfid: &str,
        external_userid: &str,
    ) -> Result<Session, KfError> {
        const API: &str = "kf/service_state/get";
        validate_open_kfid(open_kfid)?;
        validate_external_userid(external_userid)?;
        let v = self
            .post(
                API,
                &json!({"open_kfid": open_kfid, "external_userid": external_userid}),
            )
            .await?;
        let state = v
            .get("service_state")
            .and_then(Value::as_i64)
            .ok_or_else(|| bad_response(API, "no service_state"))?;
        Ok(Session {
            open_kfid: open_kfid.to_owned(),
            external_userid: external_userid.to_owned(),
            service_state: state,
            state_name: name_of(state),
            servicer_userid: v
                .get("servicer_userid")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_owned),
        })
    }

    /// `kf/service_state/trans` `{open_kfid, external_userid, service_state, servicer_userid?}`
    /// → `msg_code` (94669), after reading the current state and checking the move is one
    /// WeCom allows ([`transition_allowed`]).
    pub async fn session_transfer(
        &self,
        open_kfid: &str,
        external_userid: &str,
        to: i64,
        servicer: Option<&str>,
    ) -> Result<Transfer, KfError> {
        validate_open_kfid(open_kfid)?;
        validate_external_userid(external_userid)?;
        validate_target(to, servicer)?;
        let cur = self.session_get(open_kfid, external_userid).await?;
        let from = cur.service_state;
        if !transition_allowed(from, to) {
            return Err(KfError::NotAllowed(format!(
                "session {open_kfid}/{external_userid} is in state {from} ({}); WeCom does not allow {from} → {to} ({}); allowed: 0→1/2/3, 1→2/3, 2→3, 3→3/4; nothing sent",
                name_of(from),
                name_of(to)
            )));
        }
        let mut body = json!({
            "open_kfid": open_kfid,
            "external_userid": external_userid,
            "service_state": to,
        });
        if let Some(s) = servicer {
            body["servicer_userid"] = json!(s);
        }
        let v = self.post("kf/service_state/trans", &body).await?;
        Ok(Transfer {
            open_kfid: open_kfid.to_owned(),
            external_userid: external_userid.to_owned(),
            from,
            to,
            servicer_userid: servicer.map(str::to_owned),
            msg_code: v
                .get("msg_code")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_owned),
        })
    }

    /// `kf/get_corp_statistic` `{open_kfid, start_time, end_time}` (95489).
    pub async fn stats_corp(
        &self,
        open_kfid: &str,
        range: &StatsRange,
    ) -> Result<Vec<DayStat>, KfError> {
        const API: &str = "kf/get_corp_statistic";
        validate_open_kfid(open_kfid)?;
        let body = json!({
            "open_kfid": open_kfid,
            "start_time": range.start_time,
            "end_time": range.end_time,
        });
        let v = self.post(API, &body).await?;
        field(API, &v, "statistic_list")
    }

    /// `kf/get_servicer_statistic` `{open_kfid, servicer_userid?, start_time, end_time}`
    /// (95490); without a servicer, the account's totals.
    pub async fn stats_servicer(
        &self,
        open_kfid: &str,
        servicer: Option<&str>,
        range: &StatsRange,
    ) -> Result<Vec<DayStat>, KfError> {
        const API: &str = "kf/get_servicer_statistic";
        validate_open_kfid(open_kfid)?;
        let mut body = json!({
            "open_kfid": open_kfid,
            "start_time": range.start_time,
            "end_time": range.end_time,
        });
        if let Some(u) = servicer {
            validate_userid(u)?;
            body["servicer_userid"] = json!(u);
        }
        let v = self.post(API, &body).await?;
        field(API, &v, "statistic_list")
    }
}

/// Call the platform for `ids` in chunks of `size`, one call per chunk, in order: `call`
/// makes the request for a chunk, `merge` adds its answer to the outcome. The first failed
/// call ends the run; the ids of the chunks after it are reported as `not_attempted`.
async fn in_batches<T, R, Fut>(
    ids: &[String],
    size: usize,
    mut call: impl FnMut(&[String]) -> Fut,
    mut merge: impl FnMut(&mut T, &[String], R),
) -> BatchOutcome<T>
where
    T: Serialize + Default,
    Fut: std::future::Future<Output = Result<R, KfError>>,
{
    let mut out = BatchOutcome {
        calls: 0,
        done: T::default(),
        not_attempted: Vec::new(),
        error: None,
    };
    let mut chunks = ids.chunks(size);
    for chunk in chunks.by_ref() {
        out.calls += 1;
        match call(chunk).await {
            Ok(answer) => merge(&mut out.done, chunk, answer),
            Err(e) => {
                out.error = Some(e);
                break;
            }
        }
    }
    out.not_attempted = chunks.flatten().cloned().collect();
    out
}

/// `v[key]` as `T`; a missing key is an empty list/default (the platform omits empty lists).
fn field<T: serde::de::DeserializeOwned + Default>(
    api: &'static str,
    v: &Value,
    key: &str,
) -> Result<T, KfError> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(T::default()),
        Some(x) => T::deserialize(x).map_err(|e| bad_response(api, format!("{key}: {e}"))),
    }
}
