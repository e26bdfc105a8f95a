//! Notion: the API's bot user, search, pages, blocks and comments (api.notion.com/v1), on the port
//! of the OAuth endpoints. The token as `Authorization: Bearer`, and a `Notion-Version` header on
//! every call (400 `missing_version` without, before anything else). Errors are `{"object":
//! "error", "status", "code", "message", "request_id"}`: 401 `unauthorized` (`API token is
//! invalid.`) for a missing, unknown, expired or revoked token, 403 `restricted_resource` for a
//! capability the grant lacks, 404 `object_not_found`, 400 `validation_error`, `invalid_json`, and
//! `invalid_request_url` for a route it does not serve. Ids are UUIDs, taken with or without
//! dashes and answered with them. Every answer carries a `request_id`.
//!
//! A grant's scopes are the integration's capabilities: `read_content` (search, pages, blocks),
//! `read_comments`, `insert_comments`, `update_content` (`PATCH` a page or block, `DELETE` a
//! block), `insert_content` (append children, create a page). No scopes, as the authorization
//! flow grants, is all of them.

// An `Err` is the answer itself (a `Response`), made at most once per request.
#![allow(clippy::result_large_err)]

use axum::http::{Method, StatusCode};
use axum::response::Response;
use serde_json::{json, Map, Value};
use time::OffsetDateTime;

use crate::provider::{json_response, parse_time, rfc3339, Inner, Req, Shared};
use crate::{Content, NotionComment, NotionPage};

type Answer = Result<Response, Response>;

/// The integration's bot user.
pub(crate) const BOT_ID: &str = "b0700000-0000-4000-8000-000000000001";
/// The workspace it is installed in.
pub(crate) const WORKSPACE_ID: &str = "0000face-0000-4000-8000-000000000001";
/// The user who installed it.
const USER_ID: &str = "a11ce000-0000-4000-8000-000000000001";
/// The integration's name (its bot user's).
const BOT_NAME: &str = "clawpen";

/// Whether a `POST` only reads: search and the database / data source queries.
pub(crate) fn is_read_post(path: &str) -> bool {
    path == "/v1/search" || (path.starts_with("/v1/") && path.ends_with("/query"))
}

/// Whether a logged request made a comment (`POST /v1/comments`), recorded in `notion_comments`.
pub(crate) fn is_comment_create(method: &str, path: &str) -> bool {
    method == "POST" && path.trim_end_matches('/') == "/v1/comments"
}

/// This request's id (a UUID from its place in the log).
pub(crate) fn request_id(inner: &Inner) -> String {
    format!("0000feed-0000-4000-8000-{:012x}", inner.log.len())
}

/// The user who installed the integration (the `owner` of token answers and of the bot).
pub(crate) fn owner_json(c: &Content) -> Value {
    json!({"object": "user", "id": USER_ID, "name": c.notion_user_name, "avatar_url": null, "type": "person", "person": {"email": c.notion_user_email}})
}

/// A UUID with or without dashes, as Notion answers it: lowercase, with dashes.
fn uuid(s: &str) -> Option<String> {
    let hex: String = s.chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let h = hex.to_ascii_lowercase();
    Some(format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..]))
}

/// Notion's times: to the minute, with milliseconds (`2025-06-04T09:00:00.000Z`).
fn notion_time(t: OffsetDateTime) -> String {
    let t = t.replace_second(0).unwrap_or(t);
    format!("{}.000Z", rfc3339(t).trim_end_matches('Z'))
}

/// Assigns what is empty: page ids (the first free counter ones) and times; normalizes ids and times.
pub(crate) fn fill(c: &mut Content, started: OffsetDateTime) {
    let day_before = notion_time(started - time::Duration::days(1));
    for i in 0..c.notion_pages.len() {
        if let Some(id) = uuid(&c.notion_pages[i].id) {
            c.notion_pages[i].id = id;
        }
        if c.notion_pages[i].id.is_empty() {
            let used: Vec<String> = c.notion_pages.iter().map(|p| p.id.clone()).collect();
            c.notion_pages[i].id = (1u64..).map(|n| format!("00000000-0000-4000-8000-{n:012x}")).find(|id| !used.contains(id)).unwrap_or_default();
        }
        let page = &mut c.notion_pages[i];
        page.last_edited_time = match parse_time(&page.last_edited_time) {
            Some(t) => notion_time(t),
            None => day_before.clone(),
        };
    }
}

fn error(inner: &Inner, status: StatusCode, code: &str, message: &str) -> Response {
    json_response(status, &json!({"object": "error", "status": status.as_u16(), "code": code, "message": message, "request_id": request_id(inner)}))
}

fn validation(inner: &Inner, message: &str) -> Response {
    error(inner, StatusCode::BAD_REQUEST, "validation_error", message)
}

fn not_found(inner: &Inner, what: &str, id: &str) -> Response {
    error(inner, StatusCode::NOT_FOUND, "object_not_found", &format!("Could not find {what} with ID: {id}. Make sure the relevant pages and databases are shared with your integration."))
}

/// 200 with `body` and the request's id.
fn ok(inner: &Inner, mut body: Value) -> Answer {
    body["request_id"] = request_id(inner).into();
    Ok(json_response(StatusCode::OK, &body))
}

/// Serves every path that is not OAuth.
pub(crate) fn api(shared: &Shared, inner: &mut Inner, req: &Req) -> Response {
    if req.header("notion-version").is_none_or(|v| v.trim().is_empty()) {
        let message = "Notion-Version header failed validation: Notion-Version header should be defined, instead was `undefined`.";
        return error(inner, StatusCode::BAD_REQUEST, "missing_version", message);
    }
    let segments = req.segments();
    let s: Vec<&str> = segments.iter().map(String::as_str).collect();
    // The capability the route needs (`None`: any token).
    let needs = match (&req.method, s.as_slice()) {
        (&Method::GET, ["v1", "users", "me"]) => None,
        (&Method::POST, ["v1", "search"]) | (&Method::GET, ["v1", "pages", _] | ["v1", "blocks", _] | ["v1", "blocks", _, "children"]) => Some("read_content"),
        (&Method::GET, ["v1", "comments"]) => Some("read_comments"),
        (&Method::POST, ["v1", "comments"]) => Some("insert_comments"),
        (&Method::PATCH, ["v1", "pages", _] | ["v1", "blocks", _]) | (&Method::DELETE, ["v1", "blocks", _]) => Some("update_content"),
        (&Method::PATCH, ["v1", "blocks", _, "children"]) | (&Method::POST, ["v1", "pages"]) => Some("insert_content"),
        _ => return error(inner, StatusCode::BAD_REQUEST, "invalid_request_url", "Invalid request URL."),
    };
    let capabilities = match inner.tokens.scopes_of(req.bearer()) {
        Ok(scopes) => scopes,
        Err(_) => return error(inner, StatusCode::UNAUTHORIZED, "unauthorized", "API token is invalid."),
    };
    if needs.is_some_and(|n| !capabilities.is_empty() && !capabilities.iter().any(|c| c == n)) {
        return error(inner, StatusCode::FORBIDDEN, "restricted_resource", "Insufficient permissions for this endpoint.");
    }
    let started = shared.started;
    let result = match (&req.method, s.as_slice()) {
        (&Method::GET, ["v1", "users", "me"]) => {
            let c = &inner.content;
            let body = json!({
                "object": "user", "id": BOT_ID, "name": BOT_NAME, "avatar_url": null, "type": "bot",
                "bot": {"owner": {"type": "user", "user": owner_json(c)}, "workspace_name": c.notion_workspace_name},
            });
            ok(inner, body)
        }
        (&Method::POST, ["v1", "search"]) => search(inner, req, started),
        (&Method::GET, ["v1", "pages", id]) => page(inner, id).and_then(|p| ok(inner, page_json(p, started))),
        (&Method::GET, ["v1", "blocks", id]) => block(inner, id, started).and_then(|b| ok(inner, b)),
        (&Method::GET, ["v1", "blocks", id, "children"]) => children(inner, req, id, started),
        (&Method::GET, ["v1", "comments"]) => list_comments(inner, req),
        (&Method::POST, ["v1", "comments"]) => create_comment(inner, req),
        (&Method::PATCH, ["v1", "pages", id]) => update_page(inner, req, id, started),
        (&Method::PATCH, ["v1", "blocks", id]) => body_object(inner, req).and_then(|_| block(inner, id, started)).and_then(|b| ok(inner, b)),
        (&Method::DELETE, ["v1", "blocks", id]) => block(inner, id, started).and_then(|mut b| {
            b["archived"] = true.into();
            b["in_trash"] = true.into();
            ok(inner, b)
        }),
        (&Method::PATCH, ["v1", "blocks", id, "children"]) => append_children(inner, req, id),
        _ => create_page(inner, req),
    };
    result.unwrap_or_else(|e| e)
}

/// The body as a JSON object; no body is `{}`.
fn body_object(inner: &Inner, req: &Req) -> Result<Map<String, Value>, Response> {
    if req.body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match req.json() {
        Some(Value::Object(map)) => Ok(map),
        Some(_) => Err(validation(inner, "body failed validation: body should be an object.")),
        None => Err(error(inner, StatusCode::BAD_REQUEST, "invalid_json", "Error parsing JSON body.")),
    }
}

fn annotations() -> Value {
    json!({"bold": false, "italic": false, "strikethrough": false, "underline": false, "code": false, "color": "default"})
}

/// A plain rich text item.
fn rich_text(content: &str) -> Value {
    json!({"type": "text", "text": {"content": content, "link": null}, "annotations": annotations(), "plain_text": content, "href": null})
}

/// The rich text items of a request, as Notion answers them, and their plain text; `Err` is the
/// validation message.
fn rich_items(items: &[Value], at: &str) -> Result<(Vec<Value>, String), String> {
    let mut out = Vec::new();
    let mut text = String::new();
    for (i, item) in items.iter().enumerate() {
        if let Some(content) = item.pointer("/text/content").and_then(Value::as_str) {
            let length = content.encode_utf16().count();
            if length > 2000 {
                return Err(format!("body failed validation: {at}[{i}].text.content.length should be ≤ `2000`, instead was `{length}`."));
            }
            let link = item.pointer("/text/link").cloned().unwrap_or(Value::Null);
            let href = link.get("url").cloned().unwrap_or(Value::Null);
            let mut marks = annotations();
            if let Some(Value::Object(given)) = item.get("annotations") {
                for (k, v) in given {
                    marks[k] = v.clone();
                }
            }
            out.push(json!({"type": "text", "text": {"content": content, "link": link}, "annotations": marks, "plain_text": content, "href": href}));
            text.push_str(content);
        } else if item.get("mention").is_some() || item.get("equation").is_some() {
            let plain = item.get("plain_text").and_then(Value::as_str).or_else(|| item.pointer("/equation/expression").and_then(Value::as_str)).unwrap_or_default().to_owned();
            let mut item = item.clone();
            item["plain_text"] = plain.clone().into();
            out.push(item);
            text.push_str(&plain);
        } else {
            return Err(format!("body failed validation: {at}[{i}].text should be defined, instead was `undefined`."));
        }
    }
    Ok((out, text))
}

fn user_ref() -> Value {
    json!({"object": "user", "id": USER_ID})
}

/// The title in a page URL: its words joined by `-`.
fn url_title(title: &str) -> String {
    title.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).collect::<Vec<_>>().join("-")
}

fn page_json(p: &NotionPage, started: OffsetDateTime) -> Value {
    let nodash = p.id.replace('-', "");
    let words = url_title(&p.title);
    let url = if words.is_empty() { format!("https://www.notion.so/{nodash}") } else { format!("https://www.notion.so/{words}-{nodash}") };
    let title: Vec<Value> = if p.title.is_empty() { Vec::new() } else { vec![rich_text(&p.title)] };
    json!({
        "object": "page", "id": p.id, "created_time": notion_time(started - time::Duration::days(30)), "last_edited_time": p.last_edited_time,
        "created_by": user_ref(), "last_edited_by": user_ref(), "cover": null, "icon": null, "parent": {"type": "workspace", "workspace": true}, "archived": false, "in_trash": false,
        "properties": {"title": {"id": "title", "type": "title", "title": title}}, "url": url, "public_url": null,
    })
}

fn page<'a>(inner: &'a Inner, id: &str) -> Result<&'a NotionPage, Response> {
    let id = uuid(id).ok_or_else(|| validation(inner, &format!("path failed validation: path.page_id should be a valid uuid, instead was `\"{id}\"`.")))?;
    inner.content.notion_pages.iter().find(|p| p.id == id).ok_or_else(|| not_found(inner, "page", &id))
}

/// The id of block `index` of a page: the page's id with its first 8 digits `b10c` and the index.
fn block_id(page: &NotionPage, index: usize) -> String {
    format!("b10c{:04x}{}", index + 1, page.id.get(8..).unwrap_or_default())
}

fn block_json(page: &NotionPage, index: usize, started: OffsetDateTime) -> Value {
    let text = &page.paragraphs[index];
    let (kind, content) = [("### ", "heading_3"), ("## ", "heading_2"), ("# ", "heading_1"), ("- ", "bulleted_list_item")]
        .iter()
        .find_map(|(prefix, kind)| text.strip_prefix(prefix).map(|rest| (*kind, rest)))
        .unwrap_or(("paragraph", text.as_str()));
    let rich: Vec<Value> = if content.is_empty() { Vec::new() } else { vec![rich_text(content)] };
    let mut body = json!({"rich_text": rich, "color": "default"});
    if kind.starts_with("heading") {
        body["is_toggleable"] = false.into();
    }
    let mut block = json!({
        "object": "block", "id": block_id(page, index), "parent": {"type": "page_id", "page_id": page.id}, "created_time": notion_time(started - time::Duration::days(30)),
        "last_edited_time": page.last_edited_time, "created_by": user_ref(), "last_edited_by": user_ref(), "has_children": false, "archived": false, "in_trash": false, "type": kind,
    });
    block[kind] = body;
    block
}

/// A page's own block (`child_page`).
fn page_block_json(page: &NotionPage, started: OffsetDateTime) -> Value {
    json!({
        "object": "block", "id": page.id, "parent": {"type": "workspace", "workspace": true}, "created_time": notion_time(started - time::Duration::days(30)),
        "last_edited_time": page.last_edited_time, "created_by": user_ref(), "last_edited_by": user_ref(), "has_children": !page.paragraphs.is_empty(), "archived": false,
        "in_trash": false, "type": "child_page", "child_page": {"title": page.title},
    })
}

/// What a block id names: a page (`None`) or a page's block.
fn find_block<'a>(inner: &'a Inner, id: &str) -> Result<(&'a NotionPage, Option<usize>), Response> {
    let id = uuid(id).ok_or_else(|| validation(inner, &format!("path failed validation: path.block_id should be a valid uuid, instead was `\"{id}\"`.")))?;
    for p in &inner.content.notion_pages {
        if p.id == id {
            return Ok((p, None));
        }
        if let Some(i) = (0..p.paragraphs.len()).find(|i| block_id(p, *i) == id) {
            return Ok((p, Some(i)));
        }
    }
    Err(not_found(inner, "block", &id))
}

fn block(inner: &Inner, id: &str, started: OffsetDateTime) -> Result<Value, Response> {
    let (page, index) = find_block(inner, id)?;
    Ok(match index {
        Some(i) => block_json(page, i, started),
        None => page_block_json(page, started),
    })
}

/// `page_size` (1 to 100, default 100) and `start_cursor` (the id of the first item) of `items`
/// (id, object): the page and the next cursor.
fn paginate(inner: &Inner, items: Vec<(String, Value)>, page_size: Option<&Value>, start: Option<&str>, at: &str) -> Result<(Vec<Value>, Option<String>), Response> {
    let size = match page_size {
        None | Some(Value::Null) => 100,
        Some(v) => match v.as_u64().or_else(|| v.as_str().and_then(|s| s.parse().ok())) {
            Some(n) if (1..=100).contains(&n) => n as usize,
            Some(n) if n > 100 => return Err(validation(inner, &format!("{at} failed validation: {at}.page_size should be less than or equal to `100`, instead was `{n}`."))),
            _ => return Err(validation(inner, &format!("{at} failed validation: {at}.page_size should be a positive number, instead was `{v}`."))),
        },
    };
    let from = match start {
        None | Some("") => 0,
        Some(cursor) => items.iter().position(|(id, _)| Some(id.as_str()) == uuid(cursor).as_deref()).ok_or_else(|| validation(inner, &format!("The start_cursor provided is invalid: {cursor}")))?,
    };
    let next = items.get(from + size).map(|(id, _)| id.clone());
    Ok((items.into_iter().skip(from).take(size).map(|(_, v)| v).collect(), next))
}

fn list(inner: &Inner, results: Vec<Value>, next: Option<String>, kind: &str) -> Answer {
    let mut body = json!({"object": "list", "results": results, "has_more": next.is_some(), "next_cursor": next, "type": kind});
    body[kind] = json!({});
    ok(inner, body)
}

/// `POST /v1/search`: pages whose title contains `query` (any case), all of them without one.
fn search(inner: &Inner, req: &Req, started: OffsetDateTime) -> Answer {
    let body = body_object(inner, req)?;
    let query = match body.get("query") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(q)) => q.to_lowercase(),
        Some(other) => return Err(validation(inner, &format!("body failed validation: body.query should be a string, instead was `{other}`."))),
    };
    let mut pages = true;
    if let Some(filter) = body.get("filter").filter(|f| !f.is_null()) {
        let value = filter.get("value").and_then(Value::as_str);
        if filter.get("property").and_then(Value::as_str) != Some("object") || !matches!(value, Some("page" | "data_source" | "database")) {
            return Err(validation(inner, "body failed validation: body.filter.value should be `\"page\"` or `\"data_source\"`, and body.filter.property should be `\"object\"`."));
        }
        // No databases (data sources) are shared with the integration.
        pages = value == Some("page");
    }
    let mut found: Vec<&NotionPage> = inner.content.notion_pages.iter().filter(|p| pages && p.title.to_lowercase().contains(&query)).collect();
    if let Some(sort) = body.get("sort").filter(|s| !s.is_null()) {
        let direction = sort.get("direction").and_then(Value::as_str);
        if sort.get("timestamp").and_then(Value::as_str) != Some("last_edited_time") || !matches!(direction, Some("ascending" | "descending")) {
            return Err(validation(inner, "body failed validation: body.sort.timestamp should be `\"last_edited_time\"`, and body.sort.direction should be `\"ascending\"` or `\"descending\"`."));
        }
        found.sort_by(|a, b| a.last_edited_time.cmp(&b.last_edited_time));
        if direction == Some("descending") {
            found.reverse();
        }
    }
    let items = found.iter().map(|p| (p.id.clone(), page_json(p, started))).collect();
    let (results, next) = paginate(inner, items, body.get("page_size"), body.get("start_cursor").and_then(Value::as_str), "body")?;
    list(inner, results, next, "page_or_database")
}

/// `GET /v1/blocks/{id}/children`: a page's blocks (a block has none).
fn children(inner: &Inner, req: &Req, id: &str, started: OffsetDateTime) -> Answer {
    let (page, index) = find_block(inner, id)?;
    let items = match index {
        Some(_) => Vec::new(),
        None => (0..page.paragraphs.len()).map(|i| (block_id(page, i), block_json(page, i, started))).collect(),
    };
    let size = req.q("page_size").map(|s| Value::String(s.to_owned()));
    let (results, next) = paginate(inner, items, size.as_ref(), req.q("start_cursor"), "query")?;
    list(inner, results, next, "block")
}

fn comment_json(c: &NotionComment, rich: Vec<Value>) -> Value {
    json!({
        "object": "comment", "id": c.id, "parent": {"type": "page_id", "page_id": c.page_id}, "discussion_id": c.discussion_id, "created_time": c.created_time,
        "last_edited_time": c.created_time, "created_by": {"object": "user", "id": BOT_ID}, "rich_text": rich,
    })
}

/// `GET /v1/comments?block_id=`: the comments made on a page.
fn list_comments(inner: &Inner, req: &Req) -> Answer {
    let Some(id) = req.q("block_id") else {
        return Err(validation(inner, "query failed validation: query.block_id should be defined, instead was `undefined`."));
    };
    let page = page(inner, id)?;
    let items = inner.notion_comments.iter().filter(|c| c.page_id == page.id).map(|c| (c.id.clone(), comment_json(c, vec![rich_text(&c.text)]))).collect();
    let size = req.q("page_size").map(|s| Value::String(s.to_owned()));
    let (results, next) = paginate(inner, items, size.as_ref(), req.q("start_cursor"), "query")?;
    list(inner, results, next, "comment")
}

/// `POST /v1/comments`: `{"parent": {"page_id"}, "rich_text"}` starts a discussion on the page,
/// `{"discussion_id", "rich_text"}` replies in one made here. Recorded in `notion_comments`.
fn create_comment(inner: &mut Inner, req: &Req) -> Answer {
    let body = body_object(inner, req)?;
    let Some(Value::Array(items)) = body.get("rich_text") else {
        return Err(validation(inner, "body failed validation: body.rich_text should be defined, instead was `undefined`."));
    };
    let (rich, text) = rich_items(items, "body.rich_text").map_err(|m| validation(inner, &m))?;
    let (page_id, discussion) = match (body.get("parent"), body.get("discussion_id")) {
        (Some(parent), None) => {
            let Some(id) = parent.get("page_id").and_then(Value::as_str) else {
                return Err(validation(inner, "body failed validation: body.parent.page_id should be defined, instead was `undefined`."));
            };
            (page(inner, id)?.id.clone(), None)
        }
        (None, Some(Value::String(d))) => {
            let wanted = uuid(d).ok_or_else(|| validation(inner, &format!("body failed validation: body.discussion_id should be a valid uuid, instead was `\"{d}\"`.")))?;
            match inner.notion_comments.iter().find(|c| c.discussion_id == wanted) {
                Some(c) => (c.page_id.clone(), Some(wanted)),
                None => return Err(not_found(inner, "discussion", &wanted)),
            }
        }
        _ => {
            let message = "body failed validation. Fix one:\nbody.parent should be defined, instead was `undefined`.\nbody.discussion_id should be defined, instead was `undefined`.";
            return Err(validation(inner, message));
        }
    };
    let n = inner.next();
    let comment = NotionComment {
        id: format!("00c0ffee-0000-4000-8000-{n:012x}"),
        page_id,
        discussion_id: discussion.unwrap_or_else(|| format!("d15c0000-0000-4000-8000-{n:012x}")),
        text,
        created_time: notion_time(OffsetDateTime::now_utc()),
    };
    let body = comment_json(&comment, rich);
    inner.notion_comments.push(comment);
    ok(inner, body)
}

/// `PATCH /v1/pages/{id}`: answered with the page (and its `archived` / `in_trash` as asked), not applied.
fn update_page(inner: &Inner, req: &Req, id: &str, started: OffsetDateTime) -> Answer {
    let body = body_object(inner, req)?;
    let mut page = page_json(page(inner, id)?, started);
    for key in ["archived", "in_trash"] {
        if let Some(flag) = body.get(key).and_then(Value::as_bool) {
            page["archived"] = flag.into();
            page["in_trash"] = flag.into();
        }
    }
    ok(inner, page)
}

/// `PATCH /v1/blocks/{id}/children` with `{"children": [blocks]}`: answered with them as made, not applied.
fn append_children(inner: &mut Inner, req: &Req, id: &str) -> Answer {
    let body = body_object(inner, req)?;
    let Some(Value::Array(given)) = body.get("children") else {
        return Err(validation(inner, "body failed validation: body.children should be defined, instead was `undefined`."));
    };
    let page_id = find_block(inner, id)?.0.id.clone();
    let now = notion_time(OffsetDateTime::now_utc());
    let mut made = Vec::new();
    for child in given {
        let n = inner.next();
        let mut block = json!({
            "object": "block", "id": format!("0b10c000-0000-4000-8000-{n:012x}"), "parent": {"type": "page_id", "page_id": page_id}, "created_time": now,
            "last_edited_time": now, "created_by": user_ref(), "last_edited_by": user_ref(), "has_children": false, "archived": false, "in_trash": false,
        });
        for (k, v) in child.as_object().into_iter().flatten().filter(|(k, _)| *k != "object") {
            block[k] = v.clone();
        }
        made.push(block);
    }
    list(inner, made, None, "block")
}

/// `POST /v1/pages` with `parent` and `properties`: answered with the page as made, not applied.
fn create_page(inner: &mut Inner, req: &Req) -> Answer {
    let body = body_object(inner, req)?;
    let parent = match body.get("parent") {
        Some(p) if p.get("page_id").is_some() => {
            let id = p["page_id"].as_str().and_then(uuid).ok_or_else(|| validation(inner, "body failed validation: body.parent.page_id should be a valid uuid."))?;
            json!({"type": "page_id", "page_id": id})
        }
        Some(p) if p.get("database_id").is_some() || p.get("data_source_id").is_some() || p.get("workspace").is_some() => p.clone(),
        _ => return Err(validation(inner, "body failed validation: body.parent should be defined, instead was `undefined`.")),
    };
    let title: String = body
        .get("properties")
        .and_then(Value::as_object)
        .and_then(|props| props.values().find_map(|p| p.get("title").and_then(Value::as_array).cloned()))
        .unwrap_or_default()
        .iter()
        .filter_map(|t| t.pointer("/text/content").and_then(Value::as_str))
        .collect();
    let n = inner.next();
    let now = notion_time(OffsetDateTime::now_utc());
    let made = NotionPage { id: format!("9a9e0000-0000-4000-8000-{n:012x}"), title, paragraphs: Vec::new(), last_edited_time: now.clone() };
    let mut page = page_json(&made, OffsetDateTime::now_utc() + time::Duration::days(30));
    page["parent"] = parent;
    page["created_time"] = now.into();
    ok(inner, page)
}
