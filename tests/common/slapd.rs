//! slapd for the level-2 tests (recipe: ../shared/recipes/slapd.md): one
//! server per call, holding the given users under
//! `uid=USER,ou=people,dc=example,dc=org`, killed when dropped.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn slapd_available() -> bool {
    let ok = Path::new("/usr/sbin/slapd").exists() && Path::new("/usr/sbin/slapadd").exists();
    if !ok {
        let msg = "slapd not installed (apt-get install slapd ldap-utils)";
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{msg} (CI=true: failing)");
        }
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr(),
            "\n!!!!!! SKIPPING level-2 slapd test: {msg} !!!!!!\n"
        );
    }
    ok
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Slapd {
    pub child: Child,
    pub port: u16,
    _dir: PathBuf,
}

impl Slapd {
    /// Stop the server (its port then refuses connections); its
    /// directory goes on drop.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self._dir);
    }
}

fn hash(pw: &str) -> String {
    let out = Command::new("/usr/sbin/slappasswd")
        .args(["-s", pw])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// The level-2 policy's entry for a slapd of this fixture on
/// `127.0.0.1:port`: binds as `uid={user},ou=people,…`, gives up after 1 s.
pub fn directory_server(port: u16) -> deorch::model::access::DirectoryServer {
    deorch::model::access::DirectoryServer {
        uri: format!("ldap://127.0.0.1:{port}"),
        bind_dn: Some("uid={user},ou=people,dc=example,dc=org".into()),
        timeout: Some(deorch::model::Duration(Duration::from_secs(1))),
        ..Default::default()
    }
}

/// Start a slapd holding `users` (uid, password).
pub fn start(name: &str, users: &[(&str, &str)]) -> Slapd {
    let dir = std::env::temp_dir().join(format!("deorch-slapd-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("db")).unwrap();
    let d = dir.display();
    std::fs::write(
        dir.join("slapd.conf"),
        format!(
            "include /etc/ldap/schema/core.schema\ninclude /etc/ldap/schema/cosine.schema\n\
             include /etc/ldap/schema/inetorgperson.schema\nmodulepath /usr/lib/ldap\nmoduleload back_mdb\n\
             pidfile {d}/slapd.pid\ndatabase mdb\nmaxsize 16777216\nsuffix \"dc=example,dc=org\"\n\
             rootdn \"cn=admin,dc=example,dc=org\"\nrootpw secret\ndirectory {d}/db\n\
             access to attrs=userPassword by self write by anonymous auth by * none\naccess to * by * read\n"
        ),
    )
    .unwrap();
    let mut ldif = String::from(
        "dn: dc=example,dc=org\nobjectClass: dcObject\nobjectClass: organization\no: example\ndc: example\n\n\
         dn: ou=people,dc=example,dc=org\nobjectClass: organizationalUnit\nou: people\n\n",
    );
    for (uid, pw) in users {
        ldif += &format!(
            "dn: uid={uid},ou=people,dc=example,dc=org\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {uid}\nsn: {uid}\nuserPassword: {}\n\n",
            hash(pw)
        );
    }
    std::fs::write(dir.join("users.ldif"), ldif).unwrap();
    let conf = dir.join("slapd.conf");
    let st = Command::new("/usr/sbin/slapadd")
        .arg("-f")
        .arg(&conf)
        .arg("-l")
        .arg(dir.join("users.ldif"))
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "slapadd for {name}");
    let port = free_port();
    let child = Command::new("/usr/sbin/slapd")
        .arg("-f")
        .arg(&conf)
        .args(["-h", &format!("ldap://127.0.0.1:{port}/"), "-d", "0"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "slapd {name} did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    Slapd {
        child,
        port,
        _dir: dir,
    }
}
