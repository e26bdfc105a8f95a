//! GitHub: issues and pull requests of a repository, read; a comment on one, by proposal.

use serde::Deserialize;
use serde_json::{json, Value};

use super::{args, cut, object, text, Draft, Exec, Kind, Provider, ToolDef, TEXT};
use crate::ToolError;

/// OAuth Apps have no narrower scope that reads private issues; a GitHub App (recommended, see
/// docs/INTEGRATIONS.md) ignores scopes and has the permissions it was registered with.
const REPO_SCOPE: &str = "repo";

/// `owner/name`: GitHub's rules for both, and never `.` or `..` as the name.
const REPO: &str = "^[A-Za-z0-9-]{1,39}/[A-Za-z0-9._-]{1,100}$";
const CAP: usize = 16 * 1024;

fn repo_schema() -> Value {
    json!({"type": "string", "pattern": REPO, "not": {"pattern": "/\\.{1,2}$"}, "description": "the repository as owner/name, e.g. \"acme/app\""})
}

fn number_schema() -> Value {
    json!({"type": "integer", "minimum": 1, "maximum": 1_000_000_000, "description": "the issue or pull request number, e.g. 12"})
}

pub const TOOLS: &[ToolDef] = &[
    ToolDef {
        name: "github_list_issues",
        provider: Provider::Github,
        source: "GitHub",
        description: "List issues and pull requests of a GitHub repository, most recently updated first (each marked kind: issue or pull_request).",
        scopes: &[REPO_SCOPE],
        kind: Kind::Read,
        method: "GET",
        path: "/repos/{owner}/{repo}/issues?state=…&sort=updated&per_page=30",
        result_cap: CAP,
        fields: &["number", "title", "state", "kind", "user", "labels", "comments", "created_at", "updated_at"],
        schema: || object(json!({"repo": repo_schema(), "state": {"type": "string", "enum": ["open", "closed", "all"], "description": "which issues; default open"}}), &["repo"]),
    },
    ToolDef {
        name: "github_read_issue",
        provider: Provider::Github,
        source: "GitHub",
        description: "Read one GitHub issue or pull request and its latest comments.",
        scopes: &[REPO_SCOPE],
        kind: Kind::Read,
        method: "GET",
        path: "/repos/{owner}/{repo}/issues/{number} and …/issues/{number}/comments?per_page=30",
        result_cap: CAP,
        fields: &["number", "title", "state", "kind", "user", "labels", "body", "created_at", "updated_at", "comments"],
        schema: || object(json!({"repo": repo_schema(), "number": number_schema()}), &["repo", "number"]),
    },
    ToolDef {
        name: "github_comment",
        provider: Provider::Github,
        source: "GitHub",
        description: "Propose a comment on a GitHub issue or pull request. Nothing is posted now: the user approves the proposal in clawpen, then the comment is posted as them.",
        scopes: &[REPO_SCOPE],
        kind: Kind::Propose,
        method: "POST (on approval)",
        path: "/repos/{owner}/{repo}/issues/{number}/comments",
        result_cap: 4096,
        fields: &["proposal", "state", "target", "text"],
        schema: || object(json!({"repo": repo_schema(), "number": number_schema(), "body": {"type": "string", "minLength": 1, "maxLength": 10000, "pattern": TEXT, "description": "the comment, in GitHub Markdown"}}), &["repo", "number", "body"]),
    },
];

/// A repository, checked again where it becomes two path segments.
pub(crate) struct Repo {
    pub owner: String,
    pub name: String,
}

impl Repo {
    pub fn parse(s: &str) -> Result<Repo, ToolError> {
        let bad = || ToolError::new("invalid_arguments", "argument `repo` is not valid: give owner/name, e.g. \"acme/app\"".to_owned());
        let (owner, name) = s.split_once('/').ok_or_else(bad)?;
        let owner_ok = (1..=39).contains(&owner.len()) && owner.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        let name_ok = (1..=100).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) && name != "." && name != "..";
        if owner_ok && name_ok { Ok(Repo { owner: owner.to_owned(), name: name.to_owned() }) } else { Err(bad()) }
    }

    /// `/repos/{owner}/{repo}`, each part percent-encoded into its segment.
    pub fn path(&self) -> String {
        format!("/repos/{}/{}", crate::http::segment(&self.owner), crate::http::segment(&self.name))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListIssues {
    repo: String,
    state: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadIssue {
    repo: String,
    number: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Comment {
    repo: String,
    number: u64,
    body: String,
}

fn number(n: u64) -> Result<u64, ToolError> {
    if (1..=1_000_000_000).contains(&n) { Ok(n) } else { Err(ToolError::new("invalid_arguments", "argument `number` is out of range".to_owned())) }
}

/// An issue or pull request, its declared fields only.
fn issue(i: &Value, body_chars: Option<usize>) -> Value {
    let mut out = json!({
        "number": i["number"].as_u64(),
        "title": text(&i["title"], 300),
        "state": text(&i["state"], 20),
        "kind": if i.get("pull_request").is_some_and(|p| !p.is_null()) { "pull_request" } else { "issue" },
        "user": text(&i["user"]["login"], 39),
        "labels": i["labels"].as_array().map(|l| l.iter().take(20).filter_map(|l| l["name"].as_str()).map(|n| cut(n, 50)).collect::<Vec<_>>()),
        "comments": i["comments"].as_u64(),
        "created_at": text(&i["created_at"], 40),
        "updated_at": text(&i["updated_at"], 40),
    });
    if let Some(n) = body_chars {
        out["body"] = text(&i["body"], n);
    }
    out
}

pub(crate) async fn read(x: &Exec<'_>, tool: &str, a: &Value) -> Result<Value, ToolError> {
    match tool {
        "github_list_issues" => {
            let a: ListIssues = args(a)?;
            let repo = Repo::parse(&a.repo)?;
            let state = match a.state.as_deref() {
                None => "open",
                Some(s @ ("open" | "closed" | "all")) => s,
                Some(_) => return Err(ToolError::new("invalid_arguments", "argument `state` must be open, closed or all".to_owned())),
            };
            let q = [("state", state.to_owned()), ("sort", "updated".to_owned()), ("per_page", "30".to_owned())];
            let v = x.json(&x.get(&format!("{}/issues", repo.path()), &q)).await?;
            let items: Vec<Value> = v.as_array().map(|a| a.iter().take(30).map(|i| issue(i, None)).collect()).unwrap_or_default();
            Ok(json!({"repo": a.repo, "items": items}))
        }
        "github_read_issue" => {
            let a: ReadIssue = args(a)?;
            let repo = Repo::parse(&a.repo)?;
            let path = format!("{}/issues/{}", repo.path(), number(a.number)?);
            let i = x.json(&x.get(&path, &[])).await?;
            let c = x.json(&x.get(&format!("{path}/comments"), &[("per_page", "30".to_owned())])).await?;
            let mut out = issue(&i, Some(6000));
            out["comments"] = json!(c.as_array().map(|a| a.iter().take(30).map(|c| json!({"id": c["id"].as_u64(), "user": text(&c["user"]["login"], 39), "body": text(&c["body"], 1500), "created_at": text(&c["created_at"], 40)})).collect::<Vec<_>>()).unwrap_or_default());
            Ok(out)
        }
        _ => Err(ToolError::internal("not a GitHub read tool")),
    }
}

pub(crate) async fn propose(_x: &Exec<'_>, tool: &str, a: &Value) -> Result<Draft, ToolError> {
    if tool != "github_comment" {
        return Err(ToolError::internal("not a GitHub write tool"));
    }
    let a: Comment = args(a)?;
    Repo::parse(&a.repo)?;
    number(a.number)?;
    Ok(Draft { target: format!("GitHub {} issue #{}", a.repo, a.number), text: a.body.clone(), payload: json!({"repo": a.repo, "number": a.number, "body": a.body}) })
}

pub(crate) async fn perform(x: &Exec<'_>, tool: &str, payload: &Value) -> Result<String, ToolError> {
    if tool != "github_comment" {
        return Err(ToolError::internal("not a GitHub write tool"));
    }
    let a: Comment = args(payload)?;
    let repo = Repo::parse(&a.repo)?;
    let v = x.json(&x.post(&format!("{}/issues/{}/comments", repo.path(), number(a.number)?), json!({"body": a.body}))).await?;
    let id = v["id"].as_u64().map(|i| i.to_string()).unwrap_or_else(|| "?".into());
    Ok(format!("GitHub comment {id} posted on {} #{}", a.repo, a.number))
}

/// The account's login.
pub(crate) async fn account(b: &crate::Broker, p: &crate::config::ResolvedProvider, token: &clawpen_vault::Secret<String>) -> Option<String> {
    let v = b.get_with_token(p, token, "/user", &[]).await?;
    v["login"].as_str().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repos_are_checked_and_encoded() {
        let r = Repo::parse("acme/app.rs").unwrap();
        assert_eq!(r.path(), "/repos/acme/app.rs");
        for bad in ["acme", "acme/", "/app", "acme/..", "acme/.", "ac me/app", "acme/app/extra", "../etc", "acme%2Fapp", "https://github.com/acme/app", &format!("{}/x", "a".repeat(40))] {
            assert!(Repo::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn pull_requests_are_marked() {
        let pr = issue(&json!({"number": 3, "title": "Fix", "pull_request": {"url": "x"}, "user": {"login": "ana"}}), None);
        assert_eq!(pr["kind"], "pull_request");
        assert_eq!(issue(&json!({"number": 4, "title": "Bug"}), None)["kind"], "issue");
        assert_eq!(issue(&json!({"number": 4, "pull_request": null}), None)["kind"], "issue");
    }
}
