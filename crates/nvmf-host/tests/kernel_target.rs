//! Against a Linux kernel target (nvmet-tcp), when one is reachable: set
//! NVMF_KT_ADDR=host:port and NVMF_KT_NQN (e.g. the interop lab's
//! 127.0.0.1:14420 and nqn.2014-08.io.nvmeof-lab:target). Without them the
//! tests return at once. With NVMF_KT_LAB=<lab dir> (and the lab's
//! NVMEOF_LAB_* variables) the AER test adds a namespace in the guest.
//! NVMF_KT_HOSTNQN, NVMF_KT_DHCHAP_SECRET and NVMF_KT_DHCHAP_CTRL_SECRET
//! (optional) connect as that host with those DH-HMAC-CHAP secrets, for a
//! kernel target whose configfs host entry has `dhchap_key` (and
//! `dhchap_ctrl_key`).

use std::time::{Duration, Instant};

use nvmf_host::{AsyncEvent, ConnectOptions, Controller};

fn target() -> Option<(String, ConnectOptions)> {
    let addr = std::env::var("NVMF_KT_ADDR").ok()?;
    let nqn = std::env::var("NVMF_KT_NQN").ok()?;
    let mut o = ConnectOptions::new(&nqn);
    o.ctrl_loss_tmo_s = 0;
    if let Ok(h) = std::env::var("NVMF_KT_HOSTNQN") {
        o.hostnqn = h;
    }
    let secret = |var: &str| std::env::var(var).ok().map(|k| nvmf_host::DhchapKey::parse(&k).expect(var));
    o.dhchap_secret = secret("NVMF_KT_DHCHAP_SECRET");
    o.dhchap_ctrl_secret = secret("NVMF_KT_DHCHAP_CTRL_SECRET");
    Some((addr, o))
}

#[test]
#[ignore = "needs a Linux kernel target: set NVMF_KT_ADDR and NVMF_KT_NQN (e.g. the interop lab's forwarded port) and run with --ignored"]
fn kernel_keep_alive_and_namespace_change_event() {
    let (addr, mut o) = target().expect("NVMF_KT_ADDR and NVMF_KT_NQN name a Linux kernel target");
    o.kato_s = 5;
    let mut c = Controller::connect(addr.as_str(), o).unwrap();
    // Idle for more than KATO: the kernel tears the controller down unless
    // our Keep Alive arrives every KATO/2.
    std::thread::sleep(Duration::from_secs(12));
    let mut b = vec![0u8; 4096];
    c.read(1, 0, 8, &mut b).unwrap();
    if let Ok(lab) = std::env::var("NVMF_KT_LAB") {
        let nqn = c.identify().subnqn.clone();
        let script =
            format!(". /usr/share/lab/nvmet.sh; D=$(nvmet_ramdisk 16); nvmet_ns {nqn} 2 $D && echo added ns 2 $D");
        let out = std::process::Command::new(format!("{lab}/vm.sh"))
            .args(["exec", "-"])
            .stdin_from(script)
            .expect("vm.sh exec");
        eprintln!("guest: {out}");
        let deadline = Instant::now() + Duration::from_secs(30);
        let ev = loop {
            if let Ok(e) = c.events().recv_timeout(Duration::from_millis(200)) {
                break Some(e);
            }
            if Instant::now() > deadline {
                break None;
            }
        };
        assert_eq!(ev, Some(AsyncEvent::NamespaceChanged));
        assert_eq!(c.active_namespaces().unwrap(), vec![1, 2]);
    }
    c.disconnect().unwrap();
}

trait StdinFrom {
    fn stdin_from(&mut self, s: String) -> std::io::Result<String>;
}

impl StdinFrom for std::process::Command {
    fn stdin_from(&mut self, s: String) -> std::io::Result<String> {
        use std::io::Write;
        let mut child = self.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).spawn()?;
        child.stdin.take().expect("piped").write_all(s.as_bytes())?;
        let out = child.wait_with_output()?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}
