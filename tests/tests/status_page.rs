//! The daemon's status page in a real headless browser (Debian's `chromium --headless
//! --dump-dom`): the page renders from `/status.json` with its own script, and a backend whose
//! server is killed in the namespace lab turns down on the page.

use std::{process::Command, time::Duration};

use tests::{
    echo::Echo,
    lab::Lab,
    topo::{TCP_PORT, UDP_PORT, VIP},
};

/// The page as the browser renders it (scripts run, `/status.json` fetched), from inside the
/// LB namespace where the admin endpoint listens on loopback.
fn rendered(lab: &Lab) -> String {
    let profile = lab.dir.join("chromium-profile");
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.net.lb.name, "chromium"])
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--virtual-time-budget=4000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(["--dump-dom", "http://127.0.0.1:9478/status"])
        .env("HOME", &lab.dir)
        .output()
        .expect("run chromium");
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        dom.contains("<h1>"),
        "chromium rendered nothing: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dom
}

/// The state cell of `backend`'s row in the rendered page.
fn state_of(dom: &str, backend: &str) -> String {
    let row = format!("data-backend=\"{VIP}:{TCP_PORT}/tcp {backend}\"");
    let at = dom
        .find(&row)
        .unwrap_or_else(|| panic!("no row for {backend} in the page:\n{dom}"));
    let rest = &dom[at..];
    let end = rest.find("</tr>").unwrap_or(rest.len());
    let row = &rest[..end];
    let cell = row
        .find("class=\"state ")
        .map(|i| &row[i..])
        .and_then(|c| c.split('>').nth(1))
        .and_then(|c| c.split('<').next())
        .unwrap_or_else(|| panic!("no state cell: {row}"));
    cell.to_string()
}

#[test]
fn the_status_page_renders_and_shows_a_killed_backend_down() {
    let mut lab = Lab::new(2);
    let mut servers: Vec<Option<Echo>> = lab
        .net
        .backends
        .iter()
        .map(|b| Some(Echo::backend(b, TCP_PORT, UDP_PORT)))
        .collect();
    let mut c = lab.base_config();
    c += &format!(
        "\n[[vip]]\naddress = \"{VIP}\"\nport = {TCP_PORT}\nprotocol = \"tcp\"\n\n[vip.health]\ntype = \"tcp\"\ninterval_ms = 200\ntimeout_ms = 150\nrise = 2\nfall = 2\n"
    );
    for b in &lab.net.backends {
        c += &format!("\n[[vip.backend]]\naddress = \"{}\"\n", b.addr);
    }
    lab.start(&c);
    let (b1, b2) = (
        lab.net.backends[0].addr.to_string(),
        lab.net.backends[1].addr.to_string(),
    );

    let dom = rendered(&lab);
    assert!(dom.contains("VIPs"), "{dom}");
    assert_eq!(state_of(&dom, &b1), "up");
    assert_eq!(state_of(&dom, &b2), "up");
    assert!(
        dom.contains("<div id=\"error\" style=\"display: none;\"></div>"),
        "the page says the daemon does not answer: {dom}"
    );

    servers[1].take().expect("server").kill();
    lab.wait_backend_state(None, &b2, "down", Duration::from_secs(3));
    let dom = rendered(&lab);
    assert_eq!(state_of(&dom, &b2), "down", "killed backend");
    assert_eq!(state_of(&dom, &b1), "up", "the other one");
    eprintln!(
        "status page: {} bytes rendered; {b2} down, {b1} up",
        dom.len()
    );
}
