//! GitHub: the REST API's issues and comments (api.github.com), on the port of the OAuth
//! endpoints (github.com). Errors are `{"message", "documentation_url", "status"}`: 401 `Bad
//! credentials` for an unknown, expired or revoked token, 404 `Not Found` for a repository that
//! does not exist or that the token may not see (GitHub hides private repositories), 403 without a
//! `User-Agent` header as GitHub answers. A token reaches the repositories when it has the `repo`
//! scope or no scope at all (a GitHub App's user token, whose access is the app's permissions).

use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use time::OffsetDateTime;

use crate::provider::{json_response, rfc3339, Inner, Req, Shared};
use crate::{Issue, IssueComment};

const DOCS: &str = "https://docs.github.com/rest";

/// The token's scopes, `None` for an anonymous request.
type Auth = Option<Vec<String>>;

/// Serves every path that is not OAuth.
pub(crate) fn api(shared: &Shared, inner: &mut Inner, req: &Req) -> Response {
    if req.header("user-agent").is_none_or(|ua| ua.trim().is_empty()) {
        let text = "Request forbidden by administrative rules. Please make sure your request has a User-Agent header (https://docs.github.com/en/rest/overview/resources-in-the-rest-api#user-agent-required). Check https://developer.github.com for other possible causes.\n";
        return (StatusCode::FORBIDDEN, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response();
    }
    let auth: Auth = match req.header("authorization") {
        None => None,
        Some(_) => match inner.tokens.scopes_of(req.auth_token(&["Bearer", "token"])) {
            Ok(scopes) => Some(scopes),
            Err(_) => return message(StatusCode::UNAUTHORIZED, "Bad credentials", DOCS, &None),
        },
    };
    let segments = req.segments();
    let s: Vec<&str> = segments.iter().map(String::as_str).collect();
    let base = shared.base_url.as_str();
    match (&req.method, s.as_slice()) {
        (&Method::GET, ["user"]) => match &auth {
            Some(_) => respond(StatusCode::OK, user_json(base, &inner.content.github_login), &auth),
            None => message(StatusCode::UNAUTHORIZED, "Requires authentication", "https://docs.github.com/rest/users/users#get-the-authenticated-user", &None),
        },
        (&Method::GET, ["repos", owner, name]) => repo(inner, base, &auth, owner, name),
        (&Method::GET, ["repos", owner, name, "issues"]) => issues_list(inner, req, base, &auth, &format!("{owner}/{name}")),
        (&Method::GET, ["repos", owner, name, "issues", number]) => with_issue(inner, &auth, &format!("{owner}/{name}"), number, "https://docs.github.com/rest/issues/issues#get-an-issue", |issue| {
            respond(StatusCode::OK, issue_json(base, issue), &auth)
        }),
        (&Method::GET, ["repos", owner, name, "issues", number, "comments"]) => {
            with_issue(inner, &auth, &format!("{owner}/{name}"), number, "https://docs.github.com/rest/issues/comments#list-issue-comments", |issue| {
                let all: Vec<Value> = issue.comments.iter().map(|c| comment_json(base, issue, c)).collect();
                paginated(req, base, all, &auth)
            })
        }
        (&Method::POST, ["repos", owner, name, "issues", number, "comments"]) => create_comment(inner, req, base, &auth, &format!("{owner}/{name}"), number),
        _ => message(StatusCode::NOT_FOUND, "Not Found", DOCS, &auth),
    }
}

/// A JSON answer with GitHub's headers.
fn respond(status: StatusCode, body: Value, auth: &Auth) -> Response {
    let mut response = json_response(status, &body);
    let headers = response.headers_mut();
    headers.insert("x-github-api-version-selected", HeaderValue::from_static("2022-11-28"));
    headers.insert("x-github-media-type", HeaderValue::from_static("github.v3; format=json"));
    if let Some(scopes) = auth {
        if let Ok(value) = HeaderValue::from_str(&scopes.join(", ")) {
            headers.insert("x-oauth-scopes", value);
        }
        headers.insert("x-accepted-oauth-scopes", HeaderValue::from_static("repo"));
    }
    response
}

fn message(status: StatusCode, text: &str, documentation_url: &str, auth: &Auth) -> Response {
    respond(status, json!({"message": text, "documentation_url": documentation_url, "status": status.as_u16().to_string()}), auth)
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

fn user_id(login: &str) -> u64 {
    fnv(login) % 90_000_000 + 10_000_000
}

fn user_json(base: &str, login: &str) -> Value {
    let id = user_id(login);
    json!({
        "login": login, "id": id, "node_id": format!("U_kgDO{id}"), "avatar_url": format!("https://avatars.githubusercontent.com/u/{id}?v=4"), "gravatar_id": "",
        "url": format!("{base}/users/{login}"), "html_url": format!("https://github.com/{login}"), "type": "User", "site_admin": false,
    })
}

/// May the token see (and comment on) the repositories? The seeded ones are private.
fn can_access(auth: &Auth) -> bool {
    auth.as_ref().is_some_and(|scopes| scopes.is_empty() || scopes.iter().any(|s| s == "repo"))
}

fn repo_exists(inner: &Inner, full: &str) -> bool {
    inner.content.issues.iter().any(|i| i.repo == full) || inner.content.github_repos.iter().any(|r| r == full)
}

fn repo(inner: &Inner, base: &str, auth: &Auth, owner: &str, name: &str) -> Response {
    let full = format!("{owner}/{name}");
    if !repo_exists(inner, &full) || !can_access(auth) {
        return message(StatusCode::NOT_FOUND, "Not Found", "https://docs.github.com/rest/repos/repos#get-a-repository", auth);
    }
    let open = inner.content.issues.iter().filter(|i| i.repo == full && i.state == "open").count();
    let body = json!({
        "id": fnv(&full) % 900_000_000 + 100_000_000, "node_id": format!("R_kgDOstandin{}", fnv(&full) % 1000), "name": name, "full_name": full, "private": true,
        "owner": user_json(base, owner), "html_url": format!("https://github.com/{full}"), "description": null, "fork": false, "url": format!("{base}/repos/{full}"),
        "issues_url": format!("{base}/repos/{full}/issues{{/number}}"), "default_branch": "main", "open_issues_count": open, "has_issues": true, "visibility": "private",
        "permissions": {"admin": false, "maintain": false, "push": true, "triage": true, "pull": true},
    });
    respond(StatusCode::OK, body, auth)
}

fn label_json(base: &str, repo: &str, name: &str) -> Value {
    let color = match name {
        "bug" => "d73a4a",
        "enhancement" => "a2eeef",
        "documentation" => "0075ca",
        _ => "ededed",
    };
    json!({"id": fnv(name) % 9_000_000_000 + 1_000_000_000, "node_id": format!("LA_kwDOstandin{}", fnv(name) % 100_000), "url": format!("{base}/repos/{repo}/labels/{name}"), "name": name, "color": color, "default": matches!(name, "bug" | "enhancement" | "documentation"), "description": null})
}

fn updated_at(issue: &Issue) -> String {
    // RFC 3339 in UTC sorts as text.
    issue.comments.iter().map(|c| c.created_at.clone()).chain([issue.created_at.clone()]).max().unwrap_or_default()
}

fn issue_json(base: &str, issue: &Issue) -> Value {
    let (repo, n) = (&issue.repo, issue.number);
    let api = format!("{base}/repos/{repo}");
    let kind = if issue.is_pull_request { "pull" } else { "issues" };
    let updated = updated_at(issue);
    let mut v = json!({
        "url": format!("{api}/issues/{n}"), "repository_url": api, "labels_url": format!("{api}/issues/{n}/labels{{/name}}"),
        "comments_url": format!("{api}/issues/{n}/comments"), "events_url": format!("{api}/issues/{n}/events"), "html_url": format!("https://github.com/{repo}/{kind}/{n}"),
        "id": 2_000_000_000 + (fnv(repo) % 1_000_000) * 1000 + n, "node_id": format!("{}_kwDOstandin{n}", if issue.is_pull_request { "PR" } else { "I" }), "number": n,
        "title": issue.title, "user": user_json(base, &issue.user), "labels": issue.labels.iter().map(|l| label_json(base, repo, l)).collect::<Vec<_>>(),
        "state": issue.state, "locked": false, "assignee": null, "assignees": [], "milestone": null, "comments": issue.comments.len(),
        "created_at": issue.created_at, "updated_at": updated, "closed_at": if issue.state == "closed" { Value::from(updated.clone()) } else { Value::Null },
        "author_association": "MEMBER", "active_lock_reason": null, "body": issue.body, "timeline_url": format!("{api}/issues/{n}/timeline"),
        "performed_via_github_app": null, "state_reason": if issue.state == "closed" { Value::from("completed") } else { Value::Null },
    });
    if issue.is_pull_request {
        v["draft"] = false.into();
        v["pull_request"] = json!({
            "url": format!("{api}/pulls/{n}"), "html_url": format!("https://github.com/{repo}/pull/{n}"),
            "diff_url": format!("https://github.com/{repo}/pull/{n}.diff"), "patch_url": format!("https://github.com/{repo}/pull/{n}.patch"), "merged_at": null,
        });
    }
    v
}

fn comment_json(base: &str, issue: &Issue, c: &IssueComment) -> Value {
    let (repo, n) = (&issue.repo, issue.number);
    let kind = if issue.is_pull_request { "pull" } else { "issues" };
    json!({
        "url": format!("{base}/repos/{repo}/issues/comments/{}", c.id), "html_url": format!("https://github.com/{repo}/{kind}/{n}#issuecomment-{}", c.id),
        "issue_url": format!("{base}/repos/{repo}/issues/{n}"), "id": c.id, "node_id": format!("IC_kwDOstandin{}", c.id), "user": user_json(base, &c.user),
        "created_at": c.created_at, "updated_at": c.created_at, "author_association": "MEMBER", "body": c.body, "performed_via_github_app": null,
    })
}

/// Runs `f` on the issue `number` of `repo`, or answers 404.
fn with_issue(inner: &Inner, auth: &Auth, repo: &str, number: &str, doc: &str, f: impl FnOnce(&Issue) -> Response) -> Response {
    let issue = number.parse::<u64>().ok().filter(|_| can_access(auth)).and_then(|n| inner.content.issues.iter().find(|i| i.repo == repo && i.number == n));
    match issue {
        Some(issue) => f(issue),
        None => message(StatusCode::NOT_FOUND, "Not Found", doc, auth),
    }
}

/// `per_page` (default 30, at most 100) and `page` (from 1) of `all`, with GitHub's `Link` header.
fn paginated(req: &Req, base: &str, all: Vec<Value>, auth: &Auth) -> Response {
    let per_page = req.q("per_page").and_then(|p| p.parse::<usize>().ok()).filter(|p| *p > 0).unwrap_or(30).min(100);
    let page = req.q("page").and_then(|p| p.parse::<usize>().ok()).filter(|p| *p > 0).unwrap_or(1);
    let last = all.len().div_ceil(per_page).max(1);
    let items: Vec<Value> = all.into_iter().skip((page - 1) * per_page).take(per_page).collect();
    let mut response = respond(StatusCode::OK, Value::Array(items), auth);
    let link_to = |p: usize| {
        let mut query: Vec<(String, String)> = req.query.iter().filter(|(k, _)| k != "page").cloned().collect();
        query.push(("page".into(), p.to_string()));
        format!("<{base}{}?{}>", req.path, serde_urlencoded::to_string(&query).unwrap_or_default())
    };
    let mut links = Vec::new();
    if page > 1 {
        links.push(format!("{}; rel=\"prev\"", link_to(page - 1)));
    }
    if page < last {
        links.push(format!("{}; rel=\"next\"", link_to(page + 1)));
        links.push(format!("{}; rel=\"last\"", link_to(last)));
    }
    if page > 1 {
        links.push(format!("{}; rel=\"first\"", link_to(1)));
    }
    if let Ok(value) = HeaderValue::from_str(&links.join(", ")) {
        if !links.is_empty() {
            response.headers_mut().insert(header::LINK, value);
        }
    }
    response
}

fn issues_list(inner: &Inner, req: &Req, base: &str, auth: &Auth, repo: &str) -> Response {
    let doc = "https://docs.github.com/rest/issues/issues#list-repository-issues";
    if !repo_exists(inner, repo) || !can_access(auth) {
        return message(StatusCode::NOT_FOUND, "Not Found", doc, auth);
    }
    let state = req.q("state").unwrap_or("open");
    if !matches!(state, "open" | "closed" | "all") {
        let body = json!({"message": "Validation Failed", "errors": [{"value": state, "resource": "Issue", "field": "state", "code": "invalid"}], "documentation_url": doc, "status": "422"});
        return respond(StatusCode::UNPROCESSABLE_ENTITY, body, auth);
    }
    let labels: Vec<&str> = req.q("labels").unwrap_or_default().split(',').map(str::trim).filter(|l| !l.is_empty()).collect();
    let mut issues: Vec<&Issue> = inner
        .content
        .issues
        .iter()
        .filter(|i| i.repo == repo && (state == "all" || i.state == state) && labels.iter().all(|l| i.labels.iter().any(|il| il == l)))
        .collect();
    match req.q("sort").unwrap_or("created") {
        "updated" => issues.sort_by_key(|i| (updated_at(i), i.number)),
        "comments" => issues.sort_by_key(|i| (i.comments.len(), i.number)),
        _ => issues.sort_by_key(|i| (i.created_at.clone(), i.number)),
    }
    if req.q("direction") != Some("asc") {
        issues.reverse();
    }
    let all = issues.iter().map(|i| issue_json(base, i)).collect();
    paginated(req, base, all, auth)
}

fn create_comment(inner: &mut Inner, req: &Req, base: &str, auth: &Auth, repo: &str, number: &str) -> Response {
    let doc = "https://docs.github.com/rest/issues/comments#create-an-issue-comment";
    let found = number.parse::<u64>().ok().filter(|_| can_access(auth)).and_then(|n| inner.content.issues.iter().position(|i| i.repo == repo && i.number == n));
    let Some(index) = found else {
        return message(StatusCode::NOT_FOUND, "Not Found", doc, auth);
    };
    let Some(body) = req.json() else {
        return message(StatusCode::BAD_REQUEST, "Problems parsing JSON", doc, auth);
    };
    let Some(text) = body.get("body").and_then(Value::as_str) else {
        return message(StatusCode::UNPROCESSABLE_ENTITY, "Invalid request.\n\n\"body\" wasn't supplied.", doc, auth);
    };
    let comment = IssueComment { id: inner.next_comment, user: inner.content.github_login.clone(), body: text.to_owned(), created_at: rfc3339(OffsetDateTime::now_utc()) };
    inner.next_comment += 1;
    let issue = &mut inner.content.issues[index];
    issue.comments.push(comment);
    let (issue, comment) = (&*issue, issue.comments.last().cloned().unwrap_or_default());
    let json = comment_json(base, issue, &comment);
    let mut response = respond(StatusCode::CREATED, json, auth);
    if let Ok(location) = HeaderValue::from_str(&format!("{base}/repos/{repo}/issues/comments/{}", comment.id)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}
