//! Trello: the REST API's members, boards, lists and cards (api.trello.com/1), on the port of the
//! OAuth endpoints (auth.atlassian.com: Trello's OAuth 2.0 is Atlassian's 3LO). The token only as
//! `Authorization: Bearer` (a `key` / `token` in the query is not taken): 401 `{"message":
//! "invalid token", "error": "UNAUTHORIZED"}` without a usable one, 403 `{"message": "missing
//! scope", "error": "FORBIDDEN"}` without one of the route's scopes. Ids are 24 hex digits: a
//! malformed one is 400 `invalid id` (text, as Trello answers), an unknown one 404 `{"message":
//! "The requested resource was not found.", "error": "NOT_FOUND"}`, a bad value 400 `invalid value
//! for <field>`; an unknown route is Express's 404 `Cannot GET /1/…`. `fields` (comma-separated,
//! or `all`) trims every object answered (`id` stays).

// An `Err` is the answer itself (a `Response`), made at most once per request.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;

use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use time::OffsetDateTime;

use crate::provider::{json_response, parse_time, rfc3339, Inner, Req, Shared};
use crate::{Content, TrelloBoard, TrelloCard, TrelloList, TrelloUpdate};

type Answer = Result<Response, Response>;

const READ_BOARD: &str = "read:board:trello";
const READ_CARD: &str = "read:card:trello";
const WRITE_CARD: &str = "write:card:trello";
const READ_MEMBER: &str = "read:member:trello";

/// Assigned ids: these 20 hex digits, then a counter of 4.
const BOARD_PREFIX: &str = "5f00000000000000000b";
const LIST_PREFIX: &str = "5f00000000000000000a";
const CARD_PREFIX: &str = "5f00000000000000000c";
/// The member's id.
const MEMBER_ID: &str = "5f0000000000000000a11ce0";
/// Label colors for names not in [`label_json`]'s list.
const COLORS: &[&str] = &["green", "yellow", "orange", "red", "purple", "blue", "sky", "lime", "pink"];

/// Whether a logged request is a card update (`PUT /1/cards/{id}`), recorded in `trello_updates`.
pub(crate) fn is_card_update(method: &str, path: &str) -> bool {
    method == "PUT" && matches!(path.split('/').filter(|s| !s.is_empty()).collect::<Vec<_>>().as_slice(), ["1", "cards", _])
}

/// Trello's times: RFC 3339 in UTC with milliseconds (`2025-06-04T09:00:00.000Z`).
fn trello_time(t: OffsetDateTime) -> String {
    format!("{}.000Z", rfc3339(t).trim_end_matches('Z'))
}

/// The first id of `prefix` and a 4-digit counter not in `used`.
fn free_id(prefix: &str, used: &[String]) -> String {
    (1u32..=0xffff).map(|n| format!("{prefix}{n:04x}")).find(|id| !used.contains(id)).unwrap_or_default()
}

fn used_ids<T>(items: &[T], id: impl Fn(&T) -> &String) -> Vec<String> {
    items.iter().map(|i| id(i).to_ascii_lowercase()).collect()
}

/// The id of the board `wanted` (id or name), made if it is an unknown name; empty: the first board
/// (one named `Board` made if there is none).
fn board_id(c: &mut Content, wanted: &str) -> String {
    let found = match wanted {
        "" => c.trello_boards.first(),
        _ => c.trello_boards.iter().find(|b| b.id.eq_ignore_ascii_case(wanted) || b.name == wanted),
    };
    if let Some(b) = found {
        return b.id.clone();
    }
    let id = free_id(BOARD_PREFIX, &used_ids(&c.trello_boards, |b| &b.id));
    c.trello_boards.push(TrelloBoard { id: id.clone(), ..TrelloBoard::new(if wanted.is_empty() { "Board" } else { wanted }) });
    id
}

/// The id of the list `wanted` (id or name) of `board`, made if it is an unknown name; empty: the
/// board's first list (one named `To do` made if there is none).
fn list_id(c: &mut Content, board: &str, wanted: &str) -> String {
    let mut of_board = c.trello_lists.iter().filter(|l| l.board == board);
    let found = match wanted {
        "" => of_board.next(),
        _ => of_board.find(|l| l.id.eq_ignore_ascii_case(wanted) || l.name == wanted),
    };
    if let Some(l) = found {
        return l.id.clone();
    }
    let id = free_id(LIST_PREFIX, &used_ids(&c.trello_lists, |l| &l.id));
    c.trello_lists.push(TrelloList { id: id.clone(), ..TrelloList::new(board, if wanted.is_empty() { "To do" } else { wanted }) });
    id
}

/// Assigns what is empty: board, list and card ids (the first free ones), boards and lists for
/// names, times; normalizes times to Trello's form.
pub(crate) fn fill(c: &mut Content, started: OffsetDateTime) {
    for i in 0..c.trello_boards.len() {
        if c.trello_boards[i].id.is_empty() {
            c.trello_boards[i].id = free_id(BOARD_PREFIX, &used_ids(&c.trello_boards, |b| &b.id));
        }
    }
    for i in 0..c.trello_lists.len() {
        let wanted = c.trello_lists[i].board.clone();
        c.trello_lists[i].board = board_id(c, &wanted);
        if c.trello_lists[i].id.is_empty() {
            c.trello_lists[i].id = free_id(LIST_PREFIX, &used_ids(&c.trello_lists, |l| &l.id));
        }
    }
    let day_before = trello_time(started - time::Duration::days(1));
    for i in 0..c.trello_cards.len() {
        let (board, list) = (c.trello_cards[i].board.clone(), c.trello_cards[i].list.clone());
        let board = match c.trello_lists.iter().find(|l| board.is_empty() && !list.is_empty() && l.id.eq_ignore_ascii_case(&list)) {
            Some(l) => l.board.clone(),
            None => board_id(c, &board),
        };
        let list = list_id(c, &board, &list);
        let used = used_ids(&c.trello_cards, |card| &card.id);
        let card = &mut c.trello_cards[i];
        (card.board, card.list) = (board, list);
        if card.id.is_empty() {
            card.id = free_id(CARD_PREFIX, &used);
        }
        if let Some(due) = card.due.as_deref().and_then(parse_time) {
            card.due = Some(trello_time(due));
        }
        card.last_activity = match parse_time(&card.last_activity) {
            Some(t) => trello_time(t),
            None => day_before.clone(),
        };
    }
}

fn text(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

fn error(status: StatusCode, message: &str, code: &str) -> Response {
    json_response(status, &json!({"message": message, "error": code}))
}

fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "The requested resource was not found.", "NOT_FOUND")
}

fn invalid(field: &str) -> Response {
    text(StatusCode::BAD_REQUEST, format!("invalid value for {field}"))
}

/// A well-formed id (24 hex digits), lowercased; else 400 `invalid id`.
fn valid_id(id: &str) -> Result<String, Response> {
    if id.len() == 24 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(id.to_ascii_lowercase())
    } else {
        Err(text(StatusCode::BAD_REQUEST, "invalid id".into()))
    }
}

/// Serves every path that is not OAuth.
pub(crate) fn api(_shared: &Shared, inner: &mut Inner, req: &Req) -> Response {
    let segments = req.segments();
    let s: Vec<&str> = segments.iter().map(String::as_str).collect();
    // The route's scopes (any one of them will do), before the token is looked at.
    let needs: &[&str] = match (&req.method, s.as_slice()) {
        (&Method::GET, ["1", "members", _]) => &[READ_MEMBER, READ_BOARD],
        (&Method::GET, ["1", "members", _, "boards"] | ["1", "boards", _] | ["1", "boards", _, "lists"]) => &[READ_BOARD],
        (&Method::GET, ["1", "boards", _, "cards"] | ["1", "boards", _, "cards", _] | ["1", "lists", _, "cards"] | ["1", "cards", _]) => &[READ_CARD],
        (&Method::PUT | &Method::DELETE, ["1", "cards", _]) | (&Method::POST, ["1", "cards"]) => &[WRITE_CARD],
        _ => return text(StatusCode::NOT_FOUND, format!("Cannot {} {}", req.method, req.path)),
    };
    let scopes = match inner.tokens.scopes_of(req.bearer()) {
        Ok(scopes) => scopes,
        Err(_) => return error(StatusCode::UNAUTHORIZED, "invalid token", "UNAUTHORIZED"),
    };
    if !needs.iter().any(|n| scopes.iter().any(|g| g == n)) {
        return error(StatusCode::FORBIDDEN, "missing scope", "FORBIDDEN");
    }
    let result = match (&req.method, s.as_slice()) {
        (&Method::GET, ["1", "members", who]) => member(inner, req, who),
        (&Method::GET, ["1", "members", who, "boards"]) => member(inner, req, who).map(|_| {
            let c = &inner.content;
            ok(req, c.trello_boards.iter().map(|b| board_json(c, b)).collect())
        }),
        (&Method::GET, ["1", "boards", id]) => board(inner, id).map(|b| ok(req, board_json(&inner.content, b))),
        (&Method::GET, ["1", "boards", id, "lists"]) => lists(inner, req, id),
        (&Method::GET, ["1", "boards", id, "cards"]) => board_cards(inner, req, id, req.q("filter").unwrap_or("open")),
        (&Method::GET, ["1", "boards", id, "cards", filter]) => board_cards(inner, req, id, filter),
        (&Method::GET, ["1", "lists", id, "cards"]) => list_cards(inner, req, id),
        (&Method::GET, ["1", "cards", id]) => card_index(inner, id).map(|i| ok(req, card_json(&inner.content, &inner.content.trello_cards[i]))),
        (&Method::PUT, ["1", "cards", id]) => update_card(inner, req, id),
        (&Method::DELETE, ["1", "cards", id]) => card_index(inner, id).map(|i| {
            inner.content.trello_cards.remove(i);
            json_response(StatusCode::OK, &json!({"limits": {}}))
        }),
        _ => create_card(inner, req),
    };
    result.unwrap_or_else(|e| e)
}

/// 200 with `body`, trimmed to the `fields` parameter.
fn ok(req: &Req, body: Value) -> Response {
    json_response(StatusCode::OK, &select(req.q("fields"), body))
}

fn select(fields: Option<&str>, v: Value) -> Value {
    let Some(fields) = fields.filter(|f| *f != "all") else {
        return v;
    };
    match v {
        Value::Object(map) => Value::Object(map.into_iter().filter(|(k, _)| k == "id" || fields.split(',').any(|f| f.trim() == k)).collect()),
        Value::Array(items) => Value::Array(items.into_iter().map(|i| select(Some(fields), i)).collect()),
        other => other,
    }
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

/// Trello's 8-character short link, from the id.
fn short_link(id: &str) -> String {
    let tail: String = id.chars().skip(id.chars().count().saturating_sub(6)).collect();
    format!("st{tail}")
}

/// The name in a URL: lowercase words joined by `-`.
fn slug(name: &str) -> String {
    name.to_lowercase().split(|ch: char| !ch.is_alphanumeric()).filter(|w| !w.is_empty()).collect::<Vec<_>>().join("-")
}

fn member(inner: &Inner, req: &Req, who: &str) -> Answer {
    let c = &inner.content;
    if !(who == "me" || who == MEMBER_ID || who == c.trello_username) {
        return Err(not_found());
    }
    let initials: String = c.trello_full_name.split_whitespace().filter_map(|w| w.chars().next()).collect::<String>().to_uppercase();
    let boards: Vec<&str> = c.trello_boards.iter().map(|b| b.id.as_str()).collect();
    let body = json!({
        "id": MEMBER_ID, "username": c.trello_username, "fullName": c.trello_full_name, "initials": initials, "url": format!("https://trello.com/{}", c.trello_username),
        "avatarUrl": null, "confirmed": true, "memberType": "normal", "idBoards": boards,
    });
    Ok(ok(req, body))
}

fn board<'a>(inner: &'a Inner, id: &str) -> Result<&'a TrelloBoard, Response> {
    let id = valid_id(id)?;
    inner.content.trello_boards.iter().find(|b| b.id.eq_ignore_ascii_case(&id)).ok_or_else(not_found)
}

fn board_json(c: &Content, b: &TrelloBoard) -> Value {
    let short = short_link(&b.id);
    let last = c.trello_cards.iter().filter(|card| card.board == b.id).map(|card| card.last_activity.clone()).max();
    json!({
        "id": b.id, "name": b.name, "desc": b.desc, "closed": false, "idOrganization": null, "pinned": false, "starred": false,
        "url": format!("https://trello.com/b/{short}/{}", slug(&b.name)), "shortUrl": format!("https://trello.com/b/{short}"), "shortLink": short, "dateLastActivity": last,
    })
}

fn list_json(c: &Content, l: &TrelloList) -> Value {
    let pos = c.trello_lists.iter().filter(|x| x.board == l.board).position(|x| x.id == l.id).map_or(1, |p| p + 1);
    json!({"id": l.id, "name": l.name, "closed": false, "idBoard": l.board, "pos": 16384 * pos, "subscribed": false})
}

fn label_json(board: &str, name: &str) -> Value {
    let h = fnv(&format!("{board}/{name}"));
    let color = match name {
        "health" => "green",
        "money" => "yellow",
        "urgent" => "red",
        _ => COLORS[(h % COLORS.len() as u64) as usize],
    };
    json!({"id": format!("5f00000e{h:016x}"), "idBoard": board, "name": name, "color": color})
}

fn card_json(c: &Content, card: &TrelloCard) -> Value {
    let short = short_link(&card.id);
    let id_short = c.trello_cards.iter().filter(|x| x.board == card.board).position(|x| x.id == card.id).map_or(1, |p| p + 1);
    let labels: Vec<Value> = card.labels.iter().map(|l| label_json(&card.board, l)).collect();
    let id_labels: Vec<Value> = labels.iter().map(|l| l["id"].clone()).collect();
    json!({
        "id": card.id, "idShort": id_short, "name": card.name, "desc": card.desc, "idBoard": card.board, "idList": card.list, "due": card.due, "dueComplete": card.due_complete,
        "start": null, "closed": card.closed, "idLabels": id_labels, "labels": labels, "idMembers": [], "pos": 16384 * id_short, "shortLink": short,
        "shortUrl": format!("https://trello.com/c/{short}"), "url": format!("https://trello.com/c/{short}/{id_short}-{}", slug(&card.name)), "dateLastActivity": card.last_activity,
    })
}

fn lists(inner: &Inner, req: &Req, id: &str) -> Answer {
    let b = board(inner, id)?;
    let c = &inner.content;
    let all: Vec<Value> = c.trello_lists.iter().filter(|l| l.board == b.id).map(|l| list_json(c, l)).collect();
    match req.q("filter").unwrap_or("open") {
        "open" | "all" => Ok(ok(req, Value::Array(all))),
        "closed" => Ok(ok(req, json!([]))),
        _ => Err(invalid("filter")),
    }
}

/// Whether a card passes a cards `filter` (`open`, `visible`, `closed`, `all`).
fn passes(filter: &str, card: &TrelloCard) -> Result<bool, Response> {
    match filter {
        "open" | "visible" => Ok(!card.closed),
        "closed" => Ok(card.closed),
        "all" => Ok(true),
        _ => Err(invalid("filter")),
    }
}

fn cards_where(inner: &Inner, req: &Req, filter: &str, wanted: impl Fn(&TrelloCard) -> bool) -> Answer {
    let c = &inner.content;
    let mut out = Vec::new();
    for card in c.trello_cards.iter().filter(|card| wanted(card)) {
        if passes(filter, card)? {
            out.push(card_json(c, card));
        }
    }
    Ok(ok(req, Value::Array(out)))
}

fn board_cards(inner: &Inner, req: &Req, id: &str, filter: &str) -> Answer {
    let b = board(inner, id)?.id.clone();
    cards_where(inner, req, filter, |card| card.board == b)
}

fn list_cards(inner: &Inner, req: &Req, id: &str) -> Answer {
    let id = valid_id(id)?;
    let list = inner.content.trello_lists.iter().find(|l| l.id.eq_ignore_ascii_case(&id)).ok_or_else(not_found)?.id.clone();
    cards_where(inner, req, req.q("filter").unwrap_or("open"), |card| card.list == list)
}

fn card_index(inner: &Inner, id: &str) -> Result<usize, Response> {
    let id = valid_id(id)?;
    inner.content.trello_cards.iter().position(|c| c.id.eq_ignore_ascii_case(&id)).ok_or_else(not_found)
}

/// The parameters of a write: the query's and the body's (see [`Req::params`]), with a JSON
/// `"due": null` as `due=null`.
fn write_params(req: &Req) -> BTreeMap<String, String> {
    let mut params = req.params();
    if req.is_json() && req.json().is_some_and(|v| v.get("due").is_some_and(Value::is_null)) {
        params.insert("due".into(), "null".into());
    }
    params
}

fn boolean(v: &str) -> Option<bool> {
    match v {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

/// Sets on `card` the fields of `params` that a card update or create takes; others are ignored.
fn apply(c: &Content, card: &mut TrelloCard, params: &BTreeMap<String, String>) -> Result<(), Response> {
    if let Some(name) = params.get("name") {
        if name.trim().is_empty() || name.chars().count() > 16384 {
            return Err(invalid("name"));
        }
        card.name = name.clone();
    }
    if let Some(desc) = params.get("desc") {
        card.desc = desc.clone();
    }
    if let Some(due) = params.get("due") {
        card.due = match due.as_str() {
            "" | "null" => None,
            due => Some(trello_time(parse_time(due).ok_or_else(|| invalid("due"))?)),
        };
    }
    if let Some(v) = params.get("dueComplete") {
        card.due_complete = boolean(v).ok_or_else(|| invalid("dueComplete"))?;
    }
    if let Some(v) = params.get("closed") {
        card.closed = boolean(v).ok_or_else(|| invalid("closed"))?;
    }
    if let Some(list) = params.get("idList") {
        // A list of the card's board: moving to another board needs idBoard, which is not taken.
        card.list = c.trello_lists.iter().find(|l| l.id.eq_ignore_ascii_case(list) && l.board == card.board).ok_or_else(|| invalid("idList"))?.id.clone();
    }
    Ok(())
}

/// `PUT /1/cards/{id}`: applies the fields, records the update, answers the card.
fn update_card(inner: &mut Inner, req: &Req, id: &str) -> Answer {
    let index = card_index(inner, id)?;
    let params = write_params(req);
    let mut card = inner.content.trello_cards[index].clone();
    apply(&inner.content, &mut card, &params)?;
    card.last_activity = trello_time(OffsetDateTime::now_utc());
    let fields = params.into_iter().filter(|(k, _)| k != "key" && k != "token").collect();
    inner.trello_updates.push(TrelloUpdate { card_id: card.id.clone(), fields });
    inner.content.trello_cards[index] = card;
    let c = &inner.content;
    Ok(json_response(StatusCode::OK, &card_json(c, &c.trello_cards[index])))
}

/// `POST /1/cards` with `idList` (and `name`, `desc`, `due`, …): makes the card, answers it.
fn create_card(inner: &mut Inner, req: &Req) -> Answer {
    let params = write_params(req);
    let list = params.get("idList").and_then(|l| inner.content.trello_lists.iter().find(|x| x.id.eq_ignore_ascii_case(l))).ok_or_else(|| invalid("idList"))?;
    let id = free_id(CARD_PREFIX, &used_ids(&inner.content.trello_cards, |card| &card.id));
    let mut card = TrelloCard { id, board: list.board.clone(), list: list.id.clone(), last_activity: trello_time(OffsetDateTime::now_utc()), ..TrelloCard::default() };
    apply(&inner.content, &mut card, &params)?;
    inner.content.trello_cards.push(card);
    let c = &inner.content;
    Ok(json_response(StatusCode::OK, &card_json(c, &c.trello_cards[c.trello_cards.len() - 1])))
}
