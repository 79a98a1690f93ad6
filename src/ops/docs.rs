//! `dtun completions bash|zsh|fish` and `dtun man`: shell completions (clap_complete) and a
//! man page (clap_mangen), both generated from the same clap definition as `--help`, so they
//! never drift from the flags. The Debian package ships what the built binary prints.

use std::io::Write;

use clap::CommandFactory;
use clap_complete::Shell;

use crate::cli::Cli;

/// Writes the completion script for `shell` to `out`: clap_complete's, with the single-dash
/// spelling of every long flag (`-key-file`, as the original's users type it) beside the
/// double-dash one.
pub fn completions(shell: Shell, out: &mut dyn Write) -> anyhow::Result<()> {
    let mut cmd = Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, "dtun", &mut script);
    let script = String::from_utf8(script)?;
    let mut text = String::with_capacity(script.len() * 2);
    for line in script.lines() {
        single_dash(shell, line, &mut text);
        text.push('\n');
    }
    out.write_all(text.as_bytes())?;
    Ok(())
}

/// Appends `line` to `out`, with the single-dash forms of its long flags added as `shell`
/// writes them.
fn single_dash(shell: Shell, line: &str, out: &mut String) {
    let trimmed = line.trim_start();
    match shell {
        // `opts="... --key-file ..."` lists the words; `--key-file)` starts a value's case.
        Shell::Bash if trimmed.starts_with("opts=\"") => {
            let words: Vec<String> = line
                .split(' ')
                .map(|w| {
                    let (word, quote) = match w.strip_suffix('"') {
                        Some(word) => (word, "\""),
                        None => (w, ""),
                    };
                    match word.strip_prefix("--").filter(|f| f.len() > 1) {
                        Some(flag) => format!("{word} -{flag}{quote}"),
                        None => w.to_string(),
                    }
                })
                .collect();
            out.push_str(&words.join(" "));
        }
        Shell::Bash if trimmed.starts_with("--") && trimmed.ends_with(')') => {
            let flag = &trimmed[2..trimmed.len() - 1];
            out.push_str(&line[..line.len() - 1]);
            out.push_str(&format!("|-{flag})"));
        }
        // `complete -c dtun ... -l key-file ...`: fish's `-o` is the single-dash long form.
        Shell::Fish if trimmed.starts_with("complete ") && line.contains(" -l ") => {
            let flag = line.split(" -l ").nth(1).and_then(|r| r.split(' ').next());
            out.push_str(line);
            if let Some(flag) = flag {
                out.push_str(&format!(" -o {flag}"));
            }
        }
        // `'(...)--key-file=[...]...' \`: the same spec again for `-key-file`.
        Shell::Zsh if trimmed.starts_with('\'') && trimmed.contains("--") => {
            out.push_str(line);
            let spec = &trimmed[1..];
            // An exclusion list `(...)` or a `*` may stand before the flag.
            let from = if spec.starts_with('(') {
                spec.find(')').map_or(spec.len(), |i| i + 1)
            } else {
                0
            };
            let at = spec[from..].find("--").map_or(usize::MAX, |i| i + from);
            let head = spec.get(..at).unwrap_or("x");
            if at != usize::MAX && (head.is_empty() || head.ends_with(')') || head == "*") {
                out.push('\n');
                out.push('\'');
                out.push_str(head);
                out.push_str(&spec[at + 1..]);
            }
        }
        _ => out.push_str(line),
    }
}

/// What the man page adds to `--help`: the commands before the flags, signals, the files a
/// packaged dtun uses and the service units. The configuration file's keys follow, made from
/// the flags ([`config_keys`]).
const EXTRA: &str = r#".SH COMMANDS
.TP
\fBdtun genkey\fR
Prints a random 256\-bit key as 64 hex characters.
.TP
\fBdtun key derive \-key\-file\fR \fISECRET\fR \fB\-id\fR \fIID\fR
Prints the key a server with \fB\-master\-key\-file\fR \fISECRET\fR expects from client \fIID\fR.
.TP
\fBdtun status\fR [\fB\-json\fR] [\fIINSTANCE\fR]
Shows what the dtun named \fIINSTANCE\fR in this network namespace does (sessions,
addresses, counters); without \fIINSTANCE\fR, the one running there, or all of them.
\fB\-json\fR prints the same as JSON.
.TP
\fBdtun reload\fR [\fIINSTANCE\fR]
Makes that dtun read its configuration again, as SIGHUP does, waits, and prints what changed;
exits 1 when the new configuration was refused and the running one kept; without
\fIINSTANCE\fR, the one running (several: lists them, exit 2). Root and the user dtun runs as.
.TP
\fBdtun down\fR
Lifts the kill switch (\fB\-kill\-switch\fR) and the routes a killed client left in this network
namespace; refused while a dtun owns its routing.
.TP
\fBdtun completions\fR \fBbash\fR|\fBzsh\fR|\fBfish\fR
Prints a completion script for that shell.
.TP
\fBdtun man\fR
Prints this page.
.PP
Each command has its own \fB\-\-help\fR.
.SH SIGNALS
.TP
\fBSIGHUP\fR
A server reads its configuration again (as \fBdtun reload\fR, without waiting for the answer).
A client logs that reload is a server feature and goes on.
.TP
\fBSIGINT\fR, \fBSIGTERM\fR
Clean shutdown: close_notify to the peers, the \fB\-down\fR scripts, every device, route and
nftables table of dtun's removed; exit 0.
.SH FILES
.TP
\fI/etc/dtun/\fR
Configuration and keys (keys readable by root and the \fBdtun\fR group only).
.TP
\fI/run/dtun/\fR
Runtime files, \fBroot:dtun\fR mode 1770 (the package's tmpfiles.d entry): per network
namespace \fINETNS\fR.\fIINSTANCE\fR.lock (held while the instance runs), .sock (status,
mode 0660, the directory's group) and .admin.sock (status and reload, mode 0600, dtun's user);
saved forwarding values; a client's copy of /etc/resolv.conf while dtun's DNS is in place.
.TP
\fI/usr/lib/systemd/system/dtun\-server.service\fR, \fIdtun@.service\fR
The server's unit and the client template (one instance per /etc/dtun/\fINAME\fR.toml), run
as user \fBdtun\fR with CAP_NET_ADMIN (and CAP_NET_BIND_SERVICE for the server) only.
.SH CONFIGURATION FILE
\fB\-config\fR \fIFILE\fR reads a TOML file. Every flag is a key of the same name with \fB_\fR for
\fB\-\fR; flags on the command line win. Switches are booleans, durations \fB"90s"\fR or seconds,
lists arrays (a single value is also taken). A server's clients are tables
\fB[clients.\fR\fIID\fR\fB]\fR with \fBkey\fR or \fBkey_file\fR, \fBaddr\fR, \fBaddr6\fR,
\fBlans\fR and \fBgroup\fR. The keys:
"#;

/// The config file's keys, one per flag (`-clients` is `clients_file`), as the man page lists
/// them.
pub fn config_keys() -> Vec<String> {
    Cli::command()
        .get_arguments()
        .map(|a| a.get_id().as_str())
        .filter(|id| !matches!(*id, "config" | "check" | "help" | "version"))
        .map(|id| match id {
            "clients" => "clients_file".to_string(),
            other => other.to_string(),
        })
        .collect()
}

/// The page's end: the list of keys, then see-also.
fn tail() -> String {
    let keys: Vec<String> = config_keys()
        .iter()
        .map(|k| format!("\\fB{k}\\fR"))
        .collect();
    format!(
        "{}.\n.SH SEE ALSO\n\\fBsystemctl\\fR(1), \\fBsetcap\\fR(8), \\fBip\\fR(8)\n",
        keys.join(", ")
    )
}

/// The page's title line. clap_mangen drops an empty date argument, which would shift the
/// source and manual into its place; no date keeps the page the same from build to build.
fn title() -> String {
    format!(
        ".TH dtun 1 \"\" \"dtun {}\" \"User Commands\"\n",
        env!("CARGO_PKG_VERSION")
    )
}

/// Writes the man page (roff, section 1) to `out`.
pub fn man(out: &mut dyn Write) -> anyhow::Result<()> {
    let mut page = Vec::new();
    clap_mangen::Man::new(Cli::command()).render(&mut page)?;
    let page = String::from_utf8(page)?;
    for line in page.lines() {
        if line.starts_with(".TH ") {
            out.write_all(title().as_bytes())?;
        } else {
            writeln!(out, "{line}")?;
        }
    }
    out.write_all(EXTRA.as_bytes())?;
    out.write_all(tail().as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shell_mentions_a_flag_and_others_are_refused() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let mut out = Vec::new();
            completions(shell, &mut out).unwrap();
            let text = String::from_utf8(out).unwrap();
            assert!(text.contains("key-file"), "{shell}: {text}");
            for command in ["genkey", "derive", "status", "reload", "completions"] {
                assert!(text.contains(command), "{shell} lacks {command}: {text}");
            }
        }
        let err = Cli::try_from_args(["dtun", "completions", "tcsh"]).unwrap_err();
        assert!(err.to_string().contains("bash"), "{err}");
    }

    #[test]
    fn the_man_page_has_the_flags_and_the_commands() {
        let mut out = Vec::new();
        man(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        // One title line, with the manual in the fifth place.
        assert_eq!(text.matches(".TH ").count(), 1, "{text}");
        assert!(text.contains(&title()), "{text}");
        assert!(text.contains("key\\-file") && text.contains(".SH COMMANDS"));
        for needle in [
            "dtun status",
            "dtun reload",
            "SIGHUP",
            "clients_file",
            "max_clients",
        ] {
            assert!(text.contains(needle), "the man page lacks {needle}");
        }
    }
}
