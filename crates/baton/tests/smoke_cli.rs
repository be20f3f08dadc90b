mod support;
use support::*;

#[test]
fn deploy_switch_and_rollback_through_the_cli() {
    let mut b = Baton::new(&format!(
        "[services.web]\ncommand = {}\ninstances = 2\n[services.web.health]\ninterval = \"100ms\"\n",
        sample_app(&[])
    ));
    b.start();
    b.ok(&["deploy", "web", "v1"]);
    assert_eq!(get(&b.url("/")).1.trim(), "version=v1");
    b.ok(&["deploy", "web", "v2"]);
    assert_eq!(get(&b.url("/")).1.trim(), "version=v2");
    let s = b.status("web");
    assert_eq!(s["active"]["version"], "v2");
    assert_eq!(s["previous"]["version"], "v1");
    b.ok(&["rollback", "web"]);
    assert_eq!(get(&b.url("/")).1.trim(), "version=v1");
}
