//! Text that may reach logs, `/health` or `Debug` output without the secrets a URL can carry:
//! its userinfo (`user:password@`) and its query (`?token=…`).

use url::Url;

/// `url` as text without userinfo (dropped) and query (`?****`); fragment dropped too.
pub fn url(url: &Url) -> String {
    let mut u = url.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    let had_query = u.query().is_some();
    u.set_query(None);
    u.set_fragment(None);
    let mut s = u.to_string();
    if had_query {
        s.push_str("?****");
    }
    s
}

/// `text` (an error message, say) with the userinfo and the query of every URL in it replaced
/// by `****`. A URL starts at `scheme://` and ends at whitespace or a closing `)`, `"`, `'`,
/// `>`, `]`.
pub fn text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| c.is_whitespace() || matches!(c, ')' | '"' | '\'' | '>' | ']'))
            .unwrap_or(tail.len());
        let (url_rest, after) = tail.split_at(end);
        // Authority: up to the first `/`, `?` or `#`.
        let auth_end = url_rest.find(['/', '?', '#']).unwrap_or(url_rest.len());
        let (authority, path) = url_rest.split_at(auth_end);
        match authority.rfind('@') {
            Some(i) => {
                out.push_str("****@");
                out.push_str(&authority[i + 1..]);
            }
            None => out.push_str(authority),
        }
        match path.find(['?', '#']) {
            Some(q) => {
                out.push_str(&path[..q]);
                out.push_str("?****");
            }
            None => out.push_str(path),
        }
        rest = after;
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_userinfo_and_query() {
        let u: Url = "https://bob:s3cret@api.example.com:8443/base/?token=t0k#frag"
            .parse()
            .unwrap();
        assert_eq!(url(&u), "https://api.example.com:8443/base/?****");
        let u: Url = "http://127.0.0.1:8000".parse().unwrap();
        assert_eq!(url(&u), "http://127.0.0.1:8000/");
    }

    #[test]
    fn text_loses_userinfo_and_query_of_every_url() {
        let t = "error sending request for url (https://bob:s3cret@h:1/internal.forms/x?token=t0k): \
                 connect refused; also see http://alice@h2/p and \"https://h3/q?k=v#f\" and https://h4/";
        let r = text(t);
        for secret in ["s3cret", "bob", "t0k", "alice", "k=v"] {
            assert!(!r.contains(secret), "{secret} in {r}");
        }
        assert_eq!(
            r,
            "error sending request for url (https://****@h:1/internal.forms/x?****): \
             connect refused; also see http://****@h2/p and \"https://h3/q?****\" and https://h4/"
        );
        assert_eq!(text("no url here"), "no url here");
        assert_eq!(text("odd ://"), "odd ://");
    }
}
