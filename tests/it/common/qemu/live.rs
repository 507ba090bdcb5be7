//! A running "VM" for live-backup tests: `qemu-storage-daemon` serving a qcow2 image
//! over NBD (guest writes) with a QMP monitor (snapshots), as a hypervisor would hold it,
//! and a minimal QMP client.

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

/// A QMP connection after the capabilities handshake.
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    /// Connect, read the greeting and leave capabilities negotiation mode.
    pub fn connect(socket: &Path) -> std::io::Result<Qmp> {
        let stream = UnixStream::connect(socket)?;
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        let mut qmp = Qmp {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        };
        let greeting = qmp.read_message()?;
        if greeting.get("QMP").is_none() {
            return Err(std::io::Error::other(format!(
                "not a QMP greeting: {greeting}"
            )));
        }
        qmp.execute("qmp_capabilities", json!({}))
            .map_err(std::io::Error::other)?;
        Ok(qmp)
    }

    /// One JSON message; events (asynchronous notifications) are skipped.
    fn read_message(&mut self) -> std::io::Result<Value> {
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "QMP connection closed",
                ));
            }
            let v: Value = serde_json::from_str(&line)
                .map_err(|e| std::io::Error::other(format!("bad QMP JSON {line:?}: {e}")))?;
            if v.get("event").is_none() {
                return Ok(v);
            }
        }
    }

    /// Run a command: `Ok(return value)`, or `Err("Class: description")` when QEMU
    /// refused it (or the connection failed).
    pub fn execute(&mut self, command: &str, arguments: Value) -> Result<Value, String> {
        let msg = json!({"execute": command, "arguments": arguments});
        let mut line = msg.to_string();
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .map_err(|e| format!("send {command}: {e}"))?;
        let reply = self
            .read_message()
            .map_err(|e| format!("reply to {command}: {e}"))?;
        if let Some(r) = reply.get("return") {
            return Ok(r.clone());
        }
        match reply.get("error") {
            Some(e) => Err(format!(
                "{}: {}",
                e["class"].as_str().unwrap_or("?"),
                e["desc"].as_str().unwrap_or("?")
            )),
            None => Err(format!("unexpected QMP reply to {command}: {reply}")),
        }
    }

    /// Like [`Qmp::execute`], failing the test on an error.
    #[track_caller]
    pub fn run(&mut self, command: &str, arguments: Value) -> Value {
        self.execute(command, arguments.clone())
            .unwrap_or_else(|e| panic!("QMP {command} {arguments} failed: {e}"))
    }

    /// `blockdev-snapshot-internal-sync` on the daemon's disk.
    #[track_caller]
    pub fn snapshot(&mut self, name: &str) {
        self.run(
            "blockdev-snapshot-internal-sync",
            json!({"device": NODE, "name": name}),
        );
    }

    /// `blockdev-snapshot-delete-internal-sync` on the daemon's disk.
    pub fn delete_snapshot(&mut self, name: &str) -> Result<Value, String> {
        self.execute(
            "blockdev-snapshot-delete-internal-sync",
            json!({"device": NODE, "name": name}),
        )
    }
}

/// Node name of the qcow2 layer (the "device" of the snapshot commands) and NBD export.
pub const NODE: &str = "disk0";

/// `qemu-storage-daemon` holding a qcow2 image read-write, exporting it over NBD and
/// taking QMP commands; killed on drop.
pub struct StorageDaemon {
    child: Option<Child>,
    /// The monitor's one connection (QMP serves a single client at a time).
    qmp: Option<Qmp>,
    nbd: PathBuf,
    qmp_path: PathBuf,
}

impl StorageDaemon {
    /// Start it on `image`, with its sockets in `dir`; returns once QMP answers and the
    /// NBD socket exists.
    pub fn start(image: &Path, dir: &Path) -> StorageDaemon {
        let nbd = dir.join("nbd.sock");
        let qmp_path = dir.join("qmp.sock");
        let child = Command::new("qemu-storage-daemon")
            .arg("--blockdev")
            .arg(format!(
                "driver=file,filename={},node-name=file0",
                image.display()
            ))
            .arg("--blockdev")
            .arg(format!("driver=qcow2,file=file0,node-name={NODE}"))
            .arg("--nbd-server")
            .arg(format!("addr.type=unix,addr.path={}", nbd.display()))
            .arg("--export")
            .arg(format!(
                "type=nbd,id=exp0,node-name={NODE},name={NODE},writable=on"
            ))
            .arg("--chardev")
            .arg(format!(
                "socket,id=qmp0,path={},server=on,wait=off",
                qmp_path.display()
            ))
            .arg("--monitor")
            .arg("chardev=qmp0")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn qemu-storage-daemon");
        let mut child = child;
        let deadline = Instant::now() + Duration::from_secs(20);
        let qmp = loop {
            let problem = match child.try_wait().expect("poll qemu-storage-daemon") {
                Some(status) => Some(format!("qemu-storage-daemon exited at start: {status}")),
                None if Instant::now() > deadline => {
                    Some("qemu-storage-daemon did not open its sockets in 20 s".to_string())
                }
                None => None,
            };
            if let Some(problem) = problem {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{problem}");
            }
            if nbd.exists() {
                if let Ok(q) = Qmp::connect(&qmp_path) {
                    break q;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        StorageDaemon {
            child: Some(child),
            qmp: Some(qmp),
            nbd,
            qmp_path,
        }
    }

    /// The NBD URI of the exported disk.
    pub fn uri(&self) -> String {
        format!("nbd+unix:///{NODE}?socket={}", self.nbd.display())
    }

    /// The QMP connection.
    pub fn qmp(&mut self) -> &mut Qmp {
        if self.qmp.is_none() {
            self.qmp = Some(Qmp::connect(&self.qmp_path).expect("reconnect to QMP"));
        }
        self.qmp.as_mut().expect("connected")
    }

    /// Hand the QMP connection to someone else (e.g. a thread racing the test); the
    /// daemon connects again when it needs one after that one is dropped.
    pub fn take_qmp(&mut self) -> Qmp {
        self.qmp();
        self.qmp.take().expect("connected")
    }

    /// Guest writes through NBD, each `(pattern, offset, length)`, in one qemu-io run.
    #[track_caller]
    pub fn write(&self, writes: &[(u8, u64, u64)]) {
        let cmds: Vec<String> = writes
            .iter()
            .map(|(p, off, len)| format!("write -P {p:#x} {off} {len}"))
            .collect();
        let mut c = Command::new("qemu-io");
        c.args(["-f", "raw"]);
        for cmd in &cmds {
            c.args(["-c", cmd]);
        }
        let out = super::run(c.arg(self.uri()));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            !text.contains("error") && !text.contains("failed"),
            "qemu-io over NBD reported a failure: {text}"
        );
    }

    /// A qemu-io process taking write commands on stdin over NBD until stopped.
    pub fn writer(&self) -> NbdWriter {
        let child = Command::new("qemu-io")
            .args(["-f", "raw"])
            .arg(self.uri())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn qemu-io over NBD");
        NbdWriter { child }
    }

    /// Quit through QMP (flushes and closes the image cleanly) and wait for the exit.
    /// A connection handed out by [`StorageDaemon::take_qmp`] must be dropped first.
    pub fn stop(mut self) {
        let _ = self.qmp().execute("quit", json!({}));
        if let Some(mut child) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(20);
            while child.try_wait().expect("poll daemon").is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    panic!("qemu-storage-daemon did not quit in 20 s");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

impl Drop for StorageDaemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// An interactive qemu-io writing to the NBD export.
pub struct NbdWriter {
    child: Child,
}

impl NbdWriter {
    fn stdin(&mut self) -> &mut ChildStdin {
        self.child.stdin.as_mut().expect("qemu-io stdin")
    }

    /// Queue one `write -P pattern off len`.
    pub fn write(&mut self, pattern: u8, off: u64, len: u64) {
        let cmd = format!("write -P {pattern:#x} {off} {len}\n");
        self.stdin()
            .write_all(cmd.as_bytes())
            .expect("send a command to qemu-io");
    }

    /// Close its input and wait until every queued write is done.
    #[track_caller]
    pub fn finish(mut self) {
        drop(self.child.stdin.take());
        let status = self.child.wait().expect("wait for qemu-io");
        assert!(status.success(), "qemu-io over NBD failed: {status}");
    }
}

impl Drop for NbdWriter {
    fn drop(&mut self) {
        if self.child.stdin.is_some() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
