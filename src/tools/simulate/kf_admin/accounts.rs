//! kf accounts, servicers and customers: `account/*`, `add_contact_way`, `servicer/*`,
//! `customer/batchget`.

use std::collections::{BTreeMap, HashSet};

use serde_json::{Value, json};

use super::model::*;
use crate::tools::simulate::reply::{ApiErr, code, ok};
use crate::tools::simulate::util::{lock, random_id};

// ------------------------------------------------------------------------------ accounts

pub(super) fn account_list(kf: &KfAdmin, req: &Req) -> Result<Value, ApiErr> {
    let num = |k: &str, default: u64| match req.body.get(k) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v
            .as_u64()
            .ok_or_else(|| param(format!("{k} must be an unsigned integer"))),
    };
    let offset = num("offset", 0)?;
    let limit = num("limit", ACCOUNT_PAGE_MAX)?;
    if !(1..=ACCOUNT_PAGE_MAX).contains(&limit) {
        return Err(param("limit must be 1..=100"));
    }
    let books = lock(&kf.books);
    let list: Vec<Value> = books[req.group]
        .accounts
        .iter()
        .skip(usize::try_from(offset).unwrap_or(usize::MAX))
        .take(usize::try_from(limit).unwrap_or(usize::MAX))
        .map(|a| {
            json!({"open_kfid": a.open_kfid, "name": a.name, "avatar": avatar(&a.open_kfid),
                   "manage_privilege": true})
        })
        .collect();
    Ok(json!({"errcode": 0, "errmsg": "ok", "account_list": list}))
}

pub(super) fn account_add(kf: &KfAdmin, req: &Req) -> Result<Value, ApiErr> {
    let name = check_name(req.body.get("name"))?.ok_or_else(|| param("name missing"))?;
    let media_id = check_media(req.body.get("media_id"))?
        .ok_or_else(|| ApiErr::hint(code::INVALID_MEDIA, "media_id missing"))?;
    let kfid = format!("wk{}", random_id(GENERATED_KFID_RANDOM_LEN));
    lock(&kf.books)[req.group].accounts.push(KfAccount {
        open_kfid: kfid.clone(),
        name,
        media_id,
        servicers: BTreeMap::new(),
    });
    Ok(json!({"errcode": 0, "errmsg": "ok", "open_kfid": kfid}))
}

pub(super) fn account_update(kf: &KfAdmin, req: &Req) -> Result<Value, ApiErr> {
    let name = check_name(req.body.get("name"))?;
    let media_id = check_media(req.body.get("media_id"))?;
    let mut books = lock(&kf.books);
    let book = &mut books[req.group];
    let kfid = kfid_of(req, book)?;
    if let Some(a) = book.get_mut(&kfid) {
        if let Some(n) = name {
            a.name = n;
        }
        if let Some(m) = media_id {
            a.media_id = m;
        }
    }
    Ok(ok())
}

pub(super) fn account_del(kf: &KfAdmin, req: &Req) -> Result<Value, ApiErr> {
    let mut books = lock(&kf.books);
    let book = &mut books[req.group];
    let kfid = kfid_of(req, book)?;
    book.accounts.retain(|a| a.open_kfid != kfid);
    Ok(ok())
}

pub(super) fn add_contact_way(kf: &KfAdmin, req: &Req) -> Result<Value, ApiErr> {
    let kfid = kfid_of(req, &lock(&kf.books)[req.group])?;
    let scene = match req.body.get("scene") {
        None | Some(Value::Null) => "",
        Some(Value::String(s))
            if s.len() <= SCENE_MAX_BYTES
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') =>
        {
            s.as_str()
        }
        Some(_) => return Err(param("scene must be at most 32 bytes of [0-9a-zA-Z_-]")),
    };
    let mut url = format!("https://work.weixin.qq.com/kf/kfc{:016x}", fnv(&[&kfid]));
    if !scene.is_empty() {
        url.push_str(&format!("?enc_scene=ENC{:016x}", fnv(&[&kfid, scene])));
    }
    Ok(json!({"errcode": 0, "errmsg": "ok", "url": url}))
}

// ------------------------------------------------------------------------------ servicers

pub(super) fn servicer_list(kf: &KfAdmin, req: &Req) -> Result<Value, ApiErr> {
    let books = lock(&kf.books);
    let book = &books[req.group];
    let kfid = kfid_of(req, book)?;
    let list: Vec<Value> = book
        .accounts
        .iter()
        .find(|a| a.open_kfid == kfid)
        .map(|a| {
            a.servicers
                .iter()
                .map(|(u, s)| json!({"userid": u, "status": s}))
                .collect()
        })
        .unwrap_or_default();
    Ok(json!({"errcode": 0, "errmsg": "ok", "servicer_list": list}))
}

pub(super) fn servicer_add(kf: &KfAdmin, req: &Req) -> Result<Value, ApiErr> {
    servicer_change(kf, req, true)
}

pub(super) fn servicer_del(kf: &KfAdmin, req: &Req) -> Result<Value, ApiErr> {
    servicer_change(kf, req, false)
}

pub(super) fn servicer_change(kf: &KfAdmin, req: &Req, add: bool) -> Result<Value, ApiErr> {
    let mut books = lock(&kf.books);
    let book = &mut books[req.group];
    let kfid = kfid_of(req, book)?;
    let ids = id_list(&req.body, "userid_list")?;
    let Some(acct) = book.get_mut(&kfid) else {
        return Err(ApiErr::new(code::INVALID_OPEN_KFID));
    };
    let results: Vec<Value> = ids
        .into_iter()
        .map(|u| {
            let (code, msg) = if !is_member(u) {
                (USERID_NOT_FOUND, "userid not found")
            } else if add {
                match acct.servicers.insert(u.to_owned(), 0) {
                    None => (0, "success"),
                    Some(_) => (0, "ignored"),
                }
            } else {
                match acct.servicers.remove(u) {
                    Some(_) => (0, "success"),
                    None => (0, "ignored"),
                }
            };
            json!({"userid": u, "errcode": code, "errmsg": msg})
        })
        .collect();
    Ok(json!({"errcode": 0, "errmsg": "ok", "result_list": results}))
}

// ------------------------------------------------------------------------------ customers

pub(super) fn customer_batchget(kf: &KfAdmin, req: &Req) -> Result<Value, ApiErr> {
    let ids = id_list(&req.body, "external_userid_list")?;
    let with_context = req
        .body
        .get("need_enter_session_context")
        .and_then(Value::as_i64)
        == Some(1);
    let mut kfids: HashSet<String> = lock(&kf.books)[req.group]
        .accounts
        .iter()
        .map(|a| a.open_kfid.clone())
        .collect();
    kfids.extend(kf.sim.corps[req.group].open_kfids.iter().cloned());
    let known: HashSet<String> = {
        let conv = lock(&kf.sim.conv);
        ids.iter()
            .filter(|u| {
                kfids.iter().any(|k| {
                    conv.sessions
                        .get(k)
                        .is_some_and(|users| users.contains_key(**u))
                })
            })
            .map(|u| (*u).to_owned())
            .collect()
    };
    let mut seen = HashSet::new();
    let mut customers = Vec::new();
    let mut invalid = Vec::new();
    for u in ids {
        if !seen.insert(u) {
            continue;
        }
        if known.contains(u) {
            let mut c = json!({
                "external_userid": u,
                "nickname": format!("Customer {u}"),
                "avatar": format!("https://wx.qlogo.cn/mmhead/sim{:016x}/0", fnv(&[u])),
                "gender": fnv(&[u, "gender"]) % 3,
                "unionid": "",
            });
            if with_context {
                c["enter_session_context"] = json!({"scene": "", "scene_param": ""});
            }
            customers.push(c);
        } else {
            invalid.push(u);
        }
    }
    Ok(
        json!({"errcode": 0, "errmsg": "ok", "customer_list": customers,
              "invalid_external_userid": invalid}),
    )
}
