//! End to end in a real browser: Debian's headless Chromium, driven through chromedriver,
//! signs in to the dashboard of a real server with a link from `offload dashboard`, sees
//! the container, sees the query arrive, clicks Accept and sees the container reach the
//! edge; then an admin signs in with a pasted token and sees users, agents and the audit
//! log. Forged and reused links are refused, markup in what the server sends stays text,
//! and the page fits a phone. Screenshots land in `target/test-artifacts/dashboard/`.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{Cloud, Edge, User};
use offload_testkit::{Browser, Element};
use serde_json::{Value, json};

fn artifacts() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/test-artifacts/dashboard")
}

fn shot(browser: &Browser, name: &str) {
    let path = artifacts().join(name);
    browser
        .screenshot(&path)
        .unwrap_or_else(|e| panic!("screenshot {name}: {e:#}"));
    assert!(
        path.metadata().is_ok_and(|m| m.len() > 1000),
        "{name} is empty"
    );
}

fn wait(browser: &Browser, css: &str, secs: u64, cloud: &Cloud) -> Element {
    browser
        .wait_for(css, Duration::from_secs(secs))
        .unwrap_or_else(|e| {
            let _ = browser.screenshot(&artifacts().join("failure.png"));
            let body = browser
                .script("return document.body.innerText;", vec![])
                .unwrap_or(Value::Null);
            panic!(
                "{e:#}\npage:\n{}\nserver log:\n{}",
                body.as_str().unwrap_or_default(),
                cloud.server_log()
            )
        })
}

fn link(user: &User) -> String {
    let out = user.ok(&["dashboard", "--no-open"]);
    let url = out.lines().last().expect("a link").trim().to_owned();
    assert!(url.contains("/#link="), "{out}");
    url
}

fn token_of(user: &User) -> String {
    let text = std::fs::read_to_string(&user.config).expect("client config");
    let config: toml::Value = toml::from_str(&text).expect("config is TOML");
    config["token"].as_str().expect("token").to_owned()
}

/// Opens `url` as a new page load (a change of fragment alone would not reload).
fn open(browser: &Browser, url: &str) {
    browser.goto("about:blank").expect("blank page");
    browser.goto(url).expect("page loads");
}

#[test]
fn a_user_signs_in_with_a_link_accepts_a_query_and_sees_the_container_reach_the_edge() {
    let cloud = Cloud::start("dash-cloud");
    let root = cloud.admin("root");
    let alice = cloud.user("alice");
    let _edge = Edge::start("dash-edge", &alice);
    let id = alice.start_sleeper("box");
    let browser = Browser::start(1280, 1100).expect("headless Chromium starts");

    // A forged link: a clear error on the sign-in page.
    open(&browser, &format!("{}/#link=0123456789abcdef", cloud.url));
    let error = wait(&browser, "#signin-error:not([hidden])", 20, &cloud);
    let message = browser.text(&error).expect("text");
    assert!(message.contains("not valid"), "{message}");

    // A real link signs in, and shows the container in the cloud.
    let url = link(&alice);
    open(&browser, &url);
    wait(
        &browser,
        "tr[data-name='box'][data-location='cloud']",
        20,
        &cloud,
    );
    let who = wait(&browser, "#whoami", 5, &cloud);
    assert_eq!(browser.text(&who).expect("text"), "alice");
    let fragment = browser
        .script("return location.hash;", vec![])
        .expect("script");
    assert_eq!(
        fragment,
        json!(""),
        "the secret is taken out of the address"
    );
    wait(&browser, "#status.live", 20, &cloud);
    shot(&browser, "signed-in.png");

    // The same link a second time is refused.
    open(&browser, &url);
    let error = wait(&browser, "#signin-error:not([hidden])", 20, &cloud);
    assert!(
        browser.text(&error).expect("text").contains("not valid"),
        "a link works once"
    );
    open(&browser, &link(&alice));
    wait(&browser, "tr[data-name='box']", 20, &cloud);

    // A query arrives live; Accept moves the container to the edge.
    root.ok(&["admin", "pressure", "--user", "alice"]);
    let accept = wait(&browser, ".query button.accept", 30, &cloud);
    let question = wait(&browser, ".query h3", 5, &cloud);
    assert!(
        browser.text(&question).expect("text").contains("box"),
        "the query names the container"
    );
    wait(&browser, ".query .countdown", 5, &cloud);
    shot(&browser, "query.png");
    browser.click(&accept).expect("click Accept");
    wait(
        &browser,
        "tr[data-name='box'][data-location='edge']",
        120,
        &cloud,
    );
    wait(&browser, "#moves li .outcome-done", 30, &cloud);
    assert_eq!(alice.show(&id)["location"], "edge");
    let queries = wait(&browser, "#no-queries:not([hidden])", 20, &cloud);
    assert!(browser.text(&queries).is_ok());
    shot(&browser, "moved.png");

    // Markup in what the server sends stays text, and runs nothing. The page is read in
    // the same script that injects, before its next refresh replaces the rows.
    let check = browser
        .script(
            "apply({id: 1, at_ms: Date.now(), user: 'alice', kind: 'query_asked',
                    query_id: 'q1', container_id: 'c1',
                    name: '<img src=x onerror=\"window.pwned=1\">',
                    reason: '<b>bold</b>', deadline_at: 0});
             renderContainers([{id: 'c2', name: '<script>window.pwned=2</script>',
                    image: '<i>img</i>', owner: 'alice', location: 'cloud',
                    state: 'running', generation: 1}]);
             return {
                markup: document.querySelectorAll('#events img, #events b, #containers script, #containers i').length,
                event: document.querySelector('#events li').textContent,
                name: document.querySelector('#containers td.name').textContent,
             };",
            vec![],
        )
        .expect("inject and read");
    std::thread::sleep(Duration::from_millis(500));
    let pwned = browser
        .script(
            "return window.pwned === undefined ? null : window.pwned;",
            vec![],
        )
        .expect("read");
    assert_eq!(pwned, Value::Null, "injected markup ran");
    assert_eq!(check["markup"], 0, "{check}");
    assert!(
        check["event"]
            .as_str()
            .is_some_and(|t| t.contains("<img src=x") && t.contains("<b>bold</b>")),
        "{check}"
    );
    assert_eq!(check["name"], "<script>window.pwned=2</script>", "{check}");

    // A phone-width screen: nothing wider than the screen, the answer buttons reachable.
    browser.resize(390, 844).expect("resize");
    open(&browser, &link(&alice));
    wait(
        &browser,
        "tr[data-name='box'][data-location='edge']",
        20,
        &cloud,
    );
    let fits = browser
        .script(
            "return document.documentElement.scrollWidth <= window.innerWidth + 1;",
            vec![],
        )
        .expect("script");
    assert_eq!(fits, json!(true), "the page is wider than a phone");
    shot(&browser, "phone.png");
    browser.resize(1280, 1100).expect("resize");

    // The tab stays signed in across a reload until Sign out; then an admin signs in with a
    // pasted token and sees users, agents, nodes and the audit log.
    open(&browser, &format!("{}/", cloud.url));
    wait(&browser, "tr[data-name='box']", 20, &cloud);
    browser
        .click(&wait(&browser, "#signout:not([hidden])", 5, &cloud))
        .expect("sign out");
    let field = wait(&browser, "#signin:not([hidden]) #token", 20, &cloud);
    browser
        .type_into(&field, "not-a-token")
        .expect("type a bad token");
    let submit = wait(&browser, "#signin-button", 5, &cloud);
    browser.click(&submit).expect("submit");
    let error = wait(&browser, "#signin-error:not([hidden])", 20, &cloud);
    assert!(
        browser.text(&error).expect("text").contains("not valid"),
        "a bad token is refused with the server's sentence"
    );
    let field = wait(&browser, "#token", 5, &cloud);
    browser.type_into(&field, &token_of(&root)).expect("type");
    browser
        .click(&wait(&browser, "#signin-button", 5, &cloud))
        .expect("submit");
    let row = wait(&browser, "#users tr[data-user='alice']", 20, &cloud);
    let text = browser.text(&row).expect("text");
    assert!(text.contains("admin") || text.contains("user"), "{text}");
    assert!(!text.contains("not connected"), "alice's agent: {text}");
    wait(&browser, "#all-containers tr", 10, &cloud);
    // The rows are read in one script below: the table may be drawn again between two
    // WebDriver calls, which leaves an element found by the first one stale.
    wait(&browser, "#audit tr", 10, &cloud);
    let actions = browser
        .script(
            "return [...document.querySelectorAll('#audit tr')].map(r => r.textContent).join('\\n');",
            vec![],
        )
        .expect("audit rows");
    let actions = actions.as_str().unwrap_or_default();
    assert!(actions.contains("accept"), "{actions}");
    assert!(actions.contains("dashboard_sign_in"), "{actions}");
    let done = browser
        .script(
            "return [...document.querySelectorAll('#events li')]
                .filter(li => li.textContent.includes('box move to the edge done')).length;",
            vec![],
        )
        .expect("events");
    assert_eq!(
        done,
        json!(1),
        "each event once, none left from the last session"
    );
    shot(&browser, "admin.png");
}
