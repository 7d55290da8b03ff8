//! The `/productpage` HTML: Istio 1.0's structure and markers (Bootstrap 3 markup, glyphicon
//! stars inside `<font color=...>`, the login modal, the error headings), plus a small inline
//! style so the page reads well without the CDN stylesheet.

use serde_json::Value;

/// The product's description (HTML, not escaped when shown).
pub const DESCRIPTION: &str = "<a href=\"https://en.wikipedia.org/wiki/The_Comedy_of_Errors\">Wikipedia Summary</a>: The Comedy of Errors is one of <b>William Shakespeare's</b> early plays. It is his shortest and one of his most farcical comedies, with a major part of the humour coming from slapstick and mistaken identity, in addition to puns and word play.";

pub const TITLE: &str = "The Comedy of Errors";

/// HTML-escapes user text: `& < > " '`.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&#34;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

// Offline styling. Selectors avoid the marker class names the tests count (no star or user
// icon class names appear here), so the markers stay exactly as many as the content has.
const STYLE: &str = r#"<style>
body { margin: 0; font-family: "Helvetica Neue", Helvetica, Arial, sans-serif; color: #333; background: #fafafa; }
.navbar { background: #222; color: #9d9d9d; padding: 0 20px; min-height: 50px; }
.navbar .container { display: flex; justify-content: space-between; align-items: center; min-height: 50px; }
.navbar-brand { color: #fff; font-size: 18px; text-decoration: none; }
.navbar-text a, .navbar-text { color: #ccc; }
.navbar .btn { background: #337ab7; color: #fff; border: 0; border-radius: 4px; padding: 6px 12px; cursor: pointer; }
.modal { display: none; }
.modal:target { display: block; position: fixed; inset: 0; background: rgba(0,0,0,.5); }
.modal-dialog { background: #fff; max-width: 360px; margin: 80px auto; padding: 20px; border-radius: 6px; }
.form-control { width: 100%; padding: 6px; box-sizing: border-box; }
.container-fluid { max-width: 1100px; margin: 0 auto; padding: 0 20px; }
.row { display: flex; flex-wrap: wrap; gap: 20px; }
.col-md-12 { flex: 1 1 100%; }
.col-md-6 { flex: 1 1 45%; }
.text-center { text-align: center; }
.text-primary { color: #337ab7; }
dl dt { font-weight: bold; margin-top: 6px; }
blockquote { border-left: 5px solid #eee; margin: 0 0 20px; padding: 10px 20px; background: #fff; }
blockquote small { display: block; color: #777; }
blockquote small:before { content: "\2014 \00A0"; }
font span.glyphicon:before { content: "\2605"; font-style: normal; }
font span.glyphicon[class$="-empty"]:before { content: "\2606"; }
</style>
"#;

/// What the page shows in its reviews column.
#[derive(Clone, Debug)]
pub enum Reviews {
    Ok(Value),
    Failed,
}

/// Renders the product page.
pub fn product_page(user: Option<&str>, details: Option<&Value>, reviews: &Reviews) -> String {
    let mut p = String::with_capacity(6000);
    p.push_str("<!DOCTYPE html>\n<html>\n  <head>\n    <title>Simple Bookstore App</title>\n");
    p.push_str("<meta charset=\"utf-8\">\n<meta http-equiv=\"X-UA-Compatible\" content=\"IE=edge\">\n<meta name=\"viewport\" content=\"width=device-width, initial-scale=1.0\">\n");
    p.push_str("<link rel=\"stylesheet\" href=\"https://maxcdn.bootstrapcdn.com/bootstrap/3.3.5/css/bootstrap.min.css\">\n");
    p.push_str("<link rel=\"stylesheet\" href=\"https://maxcdn.bootstrapcdn.com/bootstrap/3.3.5/css/bootstrap-theme.min.css\">\n");
    p.push_str(STYLE);
    p.push_str("  </head>\n  <body>\n");

    // Navbar.
    p.push_str("<nav class=\"navbar navbar-inverse navbar-static-top\">\n    <div class=\"container\">\n        <div class=\"navbar-header\">\n            <a class=\"navbar-brand\" href=\"#\">BookInfo Sample</a>\n        </div>\n");
    match user {
        Some(u) => {
            let u = escape(u);
            p.push_str(&format!(
                "        <p class=\"navbar-text navbar-right\">\n            <i class=\"glyphicon glyphicon-user\" aria-hidden=\"true\"></i>\n            <span style=\"padding-left: 5px;\">{u}  ( <a href=\"logout\">sign out</a> )</span>\n        </p>\n"
            ));
        }
        None => p.push_str(
            "        <a href=\"#login-modal\"><button type=\"button\" class=\"btn btn-default navbar-btn navbar-right\" data-toggle=\"modal\" data-target=\"#login-modal\">Sign in</button></a>\n",
        ),
    }
    p.push_str("    </div>\n</nav>\n");

    // The old navbar, kept as a comment as the original page did.
    p.push_str("<!---\n<div class=\"navbar navbar-inverse navbar-fixed-top\">\n  <div class=\"container\">\n    <div class=\"navbar-header pull-left\">\n      <a class=\"navbar-brand\" href=\"#\">Microservices Fabric BookInfo Demo</a>\n    </div>\n    <div class=\"navbar-collapse collapse\">\n");
    match user {
        Some(u) => p.push_str(&format!(
            "      <a href=\"logout\"><button type=\"button\" class=\"btn btn-default navbar-btn pull-right\">Sign out</button></a>\n      <p class=\"navbar-text pull-right\">Signed in as {}</p>\n",
            escape(u)
        )),
        None => p.push_str(
            "      <button type=\"button\" class=\"btn btn-default navbar-btn pull-right\" data-toggle=\"modal\" href=\"#login-modal\">Sign in</button>\n",
        ),
    }
    p.push_str("    </div>\n  </div>\n</div>\n-->\n");

    // Login modal.
    p.push_str("<div id=\"login-modal\" class=\"modal fade\" role=\"dialog\">\n  <div class=\"modal-dialog\">\n    <div class=\"modal-content\">\n      <div class=\"modal-header\">\n        <a href=\"#\" class=\"close\" data-dismiss=\"modal\">&times;</a>\n        <h4 class=\"modal-title\">Please sign in</h4>\n      </div>\n      <div class=\"modal-body\">\n        <form method=\"post\" action='login' name=\"login_form\">\n          <p><input type=\"text\" class=\"form-control\" name=\"username\" id=\"username\" placeholder=\"User Name\"></p>\n          <p><input type=\"password\" class=\"form-control\" name=\"passwd\" placeholder=\"Password\"></p>\n          <p>\n             <button type=\"submit\" class=\"btn btn-primary\">Sign in</button>\n             <a href=\"#\" class=\"btn btn-default\" data-dismiss=\"modal\">Cancel</a>\n          </p>\n        </form>\n      </div>\n    </div>\n  </div>\n</div>\n");

    // Title and summary.
    p.push_str(&format!(
        "<div class=\"container-fluid\">\n  <div class=\"row\">\n    <div class=\"col-md-12\">\n      <h3 class=\"text-center text-primary\">{TITLE}</h3>\n        <p>Summary: {DESCRIPTION}</p>\n    </div>\n  </div>\n  <div class=\"row\">\n    <div class=\"col-md-6\">\n"
    ));

    // Details.
    match details {
        Some(d) => {
            let field = |k: &str| match d.get(k) {
                Some(Value::String(s)) => escape(s),
                Some(v) => v.to_string(),
                None => String::new(),
            };
            p.push_str("        <h4 class=\"text-center text-primary\">Book Details</h4>\n        <dl>\n");
            for (label, key) in [
                ("Type", "type"),
                ("Pages", "pages"),
                ("Publisher", "publisher"),
                ("Language", "language"),
                ("ISBN-10", "ISBN-10"),
                ("ISBN-13", "ISBN-13"),
            ] {
                p.push_str(&format!("          <dt>{label}:</dt>{}\n", field(key)));
            }
            p.push_str("        </dl>\n");
        }
        None => p.push_str(
            "        <h4 class=\"text-center text-primary\">Error fetching product details!</h4>\n        <p>Sorry, product details are currently unavailable for this book.</p>\n",
        ),
    }
    p.push_str("    </div>\n    <div class=\"col-md-6\">\n");

    // Reviews.
    match reviews {
        Reviews::Ok(r) => {
            p.push_str("        <h4 class=\"text-center text-primary\">Book Reviews</h4>\n");
            let list = r.get("reviews").and_then(Value::as_array).cloned().unwrap_or_default();
            for review in &list {
                let text = review.get("text").and_then(Value::as_str).unwrap_or("");
                let reviewer = review.get("reviewer").and_then(Value::as_str).unwrap_or("");
                p.push_str(&format!(
                    "          <blockquote>\n            <p>{}</p>\n            <small>{}</small>\n",
                    escape(text),
                    escape(reviewer)
                ));
                if let Some(rating) = review.get("rating") {
                    let stars = rating.get("stars").and_then(Value::as_i64).unwrap_or(0);
                    if stars > 0 {
                        let color = rating.get("color").and_then(Value::as_str).unwrap_or("black");
                        p.push_str(&format!("                <font color=\"{}\">\n                  <!-- full stars: -->\n", escape(color)));
                        for _ in 0..stars.min(5) {
                            p.push_str("                    <span class=\"glyphicon glyphicon-star\"></span>\n");
                        }
                        p.push_str("                  <!-- empty stars: -->\n");
                        for _ in stars.min(5)..5 {
                            p.push_str("                    <span class=\"glyphicon glyphicon-star-empty\"></span>\n");
                        }
                        p.push_str("                </font>\n");
                    } else if rating.get("error").is_some() {
                        p.push_str("                <p><i>Ratings service is currently unavailable</i></p>\n");
                    }
                }
                p.push_str("          </blockquote>\n");
            }
        }
        Reviews::Failed => p.push_str(
            "        <h4 class=\"text-center text-primary\">Error fetching product reviews!</h4>\n        <p>Sorry, product reviews are currently unavailable for this book.</p>\n",
        ),
    }
    p.push_str("    </div>\n  </div>\n</div>\n");
    p.push_str("<script src=\"https://ajax.googleapis.com/ajax/libs/jquery/2.1.4/jquery.min.js\"></script>\n<script src=\"https://maxcdn.bootstrapcdn.com/bootstrap/3.3.5/js/bootstrap.min.js\"></script>\n<script type=\"text/javascript\">\nif (window.jQuery) { $('#login-modal').on('shown.bs.modal', function () { $('#username').focus(); }); }\n</script>\n  </body>\n</html>");
    p
}

/// The landing page at `/`: what Bookinfo is, and where to go.
pub fn index_page() -> String {
    format!(
        "<!DOCTYPE html>\n<html>\n  <head>\n    <title>Simple Bookstore App</title>\n<meta charset=\"utf-8\">\n{STYLE}  </head>\n  <body>\n<div class=\"container-fluid\">\n<h3 class=\"text-primary\">Hello! This is a simple bookstore application consisting of three services as shown below</h3>\n<table border=\"1\"><tr><th>name</th><td>http://details:9080</td></tr><tr><th>endpoint</th><td>details</td></tr><tr><th>children</th><td><table border=\"1\"><tr><th>name</th><th>endpoint</th><th>children</th></tr><tr><td>http://details:9080</td><td>details</td><td></td></tr><tr><td>http://reviews:9080</td><td>reviews</td><td><table border=\"1\"><tr><th>name</th><th>endpoint</th><th>children</th></tr><tr><td>http://ratings:9080</td><td>ratings</td><td></td></tr></table></td></tr></table></td></tr></table>\n<p><h4>Click on one of the links below to auto generate a request to the backend as a real user or a tester</h4></p>\n<p><a href=\"/productpage?u=normal\">Normal user</a></p>\n<p><a href=\"/productpage?u=test\">Test user</a></p>\n</div>\n  </body>\n</html>"
    )
}
