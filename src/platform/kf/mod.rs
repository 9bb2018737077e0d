//! WeCom customer-service administration, the library behind `wxdispatch kf …`
//! ([`crate::cli`] parses, prints and picks exit codes).
//!
//! The whole kf management surface of WeCom (客服账号, 接待人员, 客户, 会话状态, 数据统计) from
//! the same binary, through the same access-token machinery the worker uses: one
//! [`Platform`](crate::platform::Platform) per account, shared tokens in the
//! [`TokenStore`](crate::platform::TokenStore), single-flight refresh, and one
//! invalidate-refresh-retry on 40014/42001/41001/40001
//! ([`Platform::wecom_call`](crate::platform::Platform::wecom_call)). Errcodes are explained
//! with [`crate::policy::classify`], the table the worker uses.
//!
//! | command | API (POST unless noted) | docs |
//! |---|---|---|
//! | `kf account list` | `kf/account/list` `{offset, limit ≤ 100}`, paged | 94661 |
//! | `kf account add` | `kf/account/add` `{name ≤ 16 chars, media_id ≤ 128 B}` → `open_kfid` | 94662 |
//! | `kf account update` | `kf/account/update` `{open_kfid, name?, media_id?}` | 94664 |
//! | `kf account delete` | `kf/account/del` `{open_kfid}` | 94663 |
//! | `kf account link` | `kf/add_contact_way` `{open_kfid, scene? ≤ 32 B of [0-9a-zA-Z_-]}` → `url` | 94665 |
//! | `kf servicer list` | GET `kf/servicer/list?open_kfid=` → `servicer_list` | 94645 |
//! | `kf servicer add/remove` | `kf/servicer/add`, `kf/servicer/del` `{open_kfid, userid_list: 1..=100}` → per-user `result_list` | 94646, 94647 |
//! | `kf customer get` | `kf/customer/batchget` `{external_userid_list: 1..=100}` → `customer_list`, `invalid_external_userid` | 95159 |
//! | `kf session get/transfer` | `kf/service_state/get`, `kf/service_state/trans` | 94669 |
//! | `kf stats corp/servicer` | `kf/get_corp_statistic`, `kf/get_servicer_statistic` `{open_kfid, [servicer_userid], start_time, end_time}` | 95489, 95490 |
//!
//! ("docs" = `https://developer.work.weixin.qq.com/document/path/<n>`; field names as
//! transcribed by silenceper/wechat `work/kf/{account,servicer,customer,servicestate,statistic}.go`
//! and the Perl `QQ::weixin::work::kf` module, which quotes the documentation's tables.)
//!
//! Every input is validated **before any platform call** (lengths, charsets, batch sizes,
//! date ranges, session transitions), so a typo never costs a call or a token. Lists longer
//! than a batch are split into calls of at most 100; a batch the platform refuses stops the
//! command (the results so far are still reported, the rest listed as not attempted).
//!
//! Callers branch on [`KfError`]: [`KfError::Invalid`] means the input was refused before any
//! call (the command line's exit code 2).
//!
//! [`validate`] holds the platform's limits and the checks made before any call, [`types`] the
//! answers, [`client`] the calls, [`error`] what can go wrong.

pub mod client;
pub mod error;
pub mod types;
pub mod validate;

pub use client::KfClient;
pub use error::{KfError, one_line};
pub use types::*;
pub use validate::*;
