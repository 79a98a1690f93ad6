//! `dtun completions bash|zsh|fish` and `dtun man`: shell completions (clap_complete) and a
//! man page (clap_mangen), both generated from the same clap definition as `--help`, so they
//! never drift from the flags. The Debian package ships what the built binary prints.

use std::io::Write;

use clap::CommandFactory;
use clap_complete::Shell;

use crate::cli::Cli;

/// The shells `dtun completions` knows.
pub const SHELLS: &str = "bash, zsh or fish";

/// Writes the completion script for `shell` (`bash`, `zsh` or `fish`) to `out`.
pub fn completions(shell: &str, out: &mut dyn Write) -> anyhow::Result<()> {
    let shell = match shell {
        "bash" => Shell::Bash,
        "zsh" => Shell::Zsh,
        "fish" => Shell::Fish,
        other => anyhow::bail!("no completions for shell {other:?}: use {SHELLS}"),
    };
    let mut cmd = Cli::command();
    clap_complete::generate(shell, &mut cmd, "dtun", out);
    Ok(())
}

/// What the man page adds to `--help`: the commands before the flags, the files a packaged
/// dtun uses and the service units.
const EXTRA: &str = r#".SH COMMANDS
.TP
\fBdtun genkey\fR
Prints a random 256\-bit key as 64 hex characters.
.TP
\fBdtun key derive \-key\-file\fR \fISECRET\fR \fB\-id\fR \fIID\fR
Prints the key a server with \fB\-master\-key\-file\fR \fISECRET\fR expects from client \fIID\fR.
.TP
\fBdtun status\fR [\fB\-json\fR] [\fIINSTANCE\fR]
Shows what the dtun named \fIINSTANCE\fR in this network namespace is doing; without
\fIINSTANCE\fR, the one running there, or all of them.
.TP
\fBdtun reload\fR [\fIINSTANCE\fR]
Makes that dtun server read its configuration again and prints what changed; without
\fIINSTANCE\fR, the one running (several: lists them, exit 2). Root and the user dtun runs as.
.TP
\fBdtun completions\fR \fBbash\fR|\fBzsh\fR|\fBfish\fR
Prints a completion script for that shell.
.TP
\fBdtun man\fR
Prints this page.
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
.SH SEE ALSO
\fBsystemctl\fR(1), \fBsetcap\fR(8), \fBip\fR(8)
"#;

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
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shell_mentions_a_flag_and_others_are_refused() {
        for shell in ["bash", "zsh", "fish"] {
            let mut out = Vec::new();
            completions(shell, &mut out).unwrap();
            let text = String::from_utf8(out).unwrap();
            assert!(text.contains("key-file"), "{shell}: {text}");
        }
        let err = completions("tcsh", &mut Vec::new()).unwrap_err();
        assert!(err.to_string().contains(SHELLS), "{err}");
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
    }
}
