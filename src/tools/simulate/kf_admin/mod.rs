//! WeCom customer-service administration (`/cgi-bin/kf/…`): kf accounts, servicers, customers
//! and statistics, served with the platform's token checks and validation errcodes from an
//! in-memory model. `wxdispatch kf` ([`crate::platform::kf`]) is the client.
//!
//! Every request is counted per API first (see `/_sim/kf/calls`), then checked like the
//! other WeCom business APIs ([`super::wecom`]): the access token (missing 41001, unknown
//! 40014, expired 42001), then a scripted errcode if one is queued for the API, then the
//! body (not a JSON object → 47001; an empty body is `{}`). Then, per API:
//!
//! | API | checks → errcode |
//! |---|---|
//! | `account/list` (POST `{offset, limit}`; GET lists everything) | limit 1..=100 (else 40058) |
//! | `account/add` `{name, media_id}` | name 1..=16 characters (40058); media_id non-empty (40007), ≤ 128 bytes (40058) → `open_kfid` |
//! | `account/update` `{open_kfid, name?, media_id?}` | open_kfid present (95004) and one of the corp's (95000); name/media_id as above |
//! | `account/del` `{open_kfid}` | open_kfid as above; its servicers go with it |
//! | `add_contact_way` `{open_kfid, scene?}` | open_kfid as above; scene ≤ 32 bytes of `[0-9a-zA-Z_-]` (40058) → `url` |
//! | `servicer/list` (GET `?open_kfid=`) | open_kfid as above → `servicer_list` (status 0) |
//! | `servicer/add`, `servicer/del` `{open_kfid, userid_list}` | open_kfid as above; 1..=100 userids (40058); per user in `result_list`: a malformed userid or one starting with [`MISSING_USERID_PREFIX`] → 60111, already a servicer (add) / not one (del) → 0 "ignored", else 0 "success" |
//! | `customer/batchget` `{external_userid_list, need_enter_session_context?}` | 1..=100 ids (40058); an id with a conversation on one of the corp's kf accounts (a session in the simulator's conversation state) is a customer, any other id is listed in `invalid_external_userid` |
//! | `get_corp_statistic`, `get_servicer_statistic` `{open_kfid, [servicer_userid], start_time, end_time}` | open_kfid as above; times rounded down to 00:00 +08:00, start ≤ end, at most 31 days, not before 180 days ago, not after yesterday (40058); servicer_userid as for servicer/add (60111) → one `statistic_list` entry per day with plausible numbers, a pure function of (open_kfid, day, servicer) |
//!
//! Each corp (the accounts sharing a corpid and secret) starts with one kf account per
//! configured `open_kfids` entry (named after the config account) and no servicers.
//!
//! # Admin endpoints
//!
//! | endpoint | does |
//! |---|---|
//! | `GET /_sim/kf/calls` | `{"calls": {"servicer/add": 3, …}}`: requests received per API (every request, refused ones included) |
//! | `POST /_sim/kf/reset` | zero the call counts and drop queued scripts (the model is kept) |
//! | `POST /_sim/kf/script` `{api, errcodes}` | the API's next requests (after the token check) are answered with these errcodes, in order; 0 processes one normally, -2 answers HTTP 500 |
//! | `GET /_sim/kf/state` | the model: per corp, its kf accounts with their servicers |
//!
//! # Simplifications
//!
//! * WeCom documents the limits these checks enforce, not always the errcode a violation
//!   gets: 40058 ("invalid parameter"), 60111 (userid not found) and the "ignored" per-user
//!   answers are the simulator's choices (callers must branch on errcode ≠ 0 only).
//! * The member directory is open: every well-formed userid is a member except those starting
//!   with [`MISSING_USERID_PREFIX`]. The 500-servicers-per-account and 5000-accounts-per-corp
//!   caps are not enforced.
//! * kf accounts added here are not known to `send_msg`, `sync_msg` and `service_state/*`,
//!   which keep checking the configured open_kfids; a deleted configured account still works
//!   there.
//! * Statistics are synthetic (not derived from the conversations), and not faulted or
//!   rate-limited: the gate's faults and rates apply to the messaging APIs only.

mod accounts;
mod model;
mod routes;
mod statistics;

#[cfg(test)]
mod tests;

pub use model::{
    ACCOUNT_PAGE_MAX, BATCH_MAX, KfAdmin, KfApi, MEDIA_ID_MAX_BYTES, MISSING_USERID_PREFIX,
    NAME_MAX_CHARS, SCENE_MAX_BYTES, STATS_MAX_AGE_DAYS, STATS_MAX_SPAN_DAYS, USERID_MAX_BYTES,
    USERID_NOT_FOUND,
};
pub(crate) use routes::routes;
