#!/bin/sh
# start-desktop.sh - Atrium's remote desktop service: TigerVNC's Xvnc plus a desktop session.
#
# One script for every place a desktop starts from an image: the desktop pod image installs it
# as /usr/local/bin/start-desktop.sh (images/desktop/Dockerfile) and the Kubernetes backend's
# "desktop" container runs it; the tests run this very file (tests/test_images.py directly,
# tests/kubernetes through the kubelet double).
#
# Usage: start-desktop.sh [--listen=IP:PORT] [--display=:N|auto] [--session=auto|xfce|openbox]
#                         [--geometry=WxH]
#   --listen    address of the RFB (VNC) port; default 127.0.0.1:6080. IPv4 only.
#   --display   X display; "auto" (default): the first free one, picked by Xvnc (-displayfd),
#               so several desktops can share one /tmp (the kubelet double's "pods" do).
#   --session   xfce, openbox, or auto (default): xfce when installed, else openbox. xfce
#               falls back to openbox when it is not installed.
#   --geometry  initial screen size, default 1280x800 (clients may resize it).
# Environment:
#   VNC_PASSWORD (required)  the VNC password (VncAuth uses its first 8 characters). It is
#       read from the environment only, never passed on a command line: written obfuscated
#       (`vncpasswd -f`, fed by the shell's printf builtin) to a private file that Xvnc reads,
#       and removed from the environment before anything else starts.
#   ATRIUM_DESKTOP_SESSION, ATRIUM_DESKTOP_GEOMETRY: defaults of --session and --geometry.
#
# Processes: the script ends by exec-ing Xvnc, so the process that was started IS the X server
# and signals sent to it (a container runtime's SIGTERM) reach it. The desktop session runs as
# its child, started once the X server accepts clients; when the X server exits, the session
# loses its display and exits, and the private directory (password file) is removed.
set -eu

die() {
    echo "start-desktop: $*" >&2
    exit 2
}

listen=127.0.0.1:6080
display=auto
session=${ATRIUM_DESKTOP_SESSION:-auto}
geometry=${ATRIUM_DESKTOP_GEOMETRY:-1280x800}
for arg in "$@"; do
    case $arg in
        --listen=*) listen=${arg#*=} ;;
        --display=*) display=${arg#*=} ;;
        --session=*) session=${arg#*=} ;;
        --geometry=*) geometry=${arg#*=} ;;
        *) die "unknown argument '$arg' (see the usage at the top of $0)" ;;
    esac
done

ip=${listen%:*}
port=${listen##*:}
case $port in
    '' | *[!0-9]*) die "--listen=$listen: expected IP:PORT" ;;
esac
[ -n "$ip" ] && [ "$ip" != "$listen" ] || die "--listen=$listen: expected IP:PORT"
case $display in
    auto) display_arg= ;;
    :[0-9]*) display_arg=$display ;;
    *) die "--display=$display: expected :N or auto" ;;
esac
case $geometry in
    [0-9]*x[0-9]*) ;;
    *) die "--geometry=$geometry: expected WIDTHxHEIGHT" ;;
esac
[ -n "${VNC_PASSWORD:-}" ] || die "VNC_PASSWORD is empty: refusing to serve a desktop without a password"
command -v Xvnc >/dev/null 2>&1 || die "Xvnc (TigerVNC) is not installed"
command -v vncpasswd >/dev/null 2>&1 || die "vncpasswd (tigervnc-tools) is not installed"

has() { command -v "$1" >/dev/null 2>&1; }
case $session in
    auto) if has xfce4-session; then session=xfce; else session=openbox; fi ;;
    xfce) has xfce4-session || session=openbox ;;
    openbox) ;;
    *) die "--session=$session: expected auto, xfce or openbox" ;;
esac
if [ "$session" = xfce ]; then
    # dbus-launch's babysitter ends the session bus when the X server goes away.
    set -- dbus-launch --exit-with-session xfce4-session
elif has openbox-session; then
    set -- openbox-session
elif has openbox; then
    set -- openbox
else
    die "no desktop session installed (xfce4-session or openbox)"
fi

session_umask=$(umask)
umask 077 # for the password file; the session gets the usual umask back below
run=$(mktemp -d "${TMPDIR:-/tmp}/atrium-desktop.XXXXXX")
# printf is a shell builtin: the password is on no process's command line, only in a pipe.
printf '%s\n' "$VNC_PASSWORD" | vncpasswd -f >"$run/passwd"
unset VNC_PASSWORD
# Xvnc writes the display number to this FIFO once it accepts X clients (-displayfd).
mkfifo "$run/display"
if [ "$session" = xfce ]; then
    # xfce4-session would start ssh-agent and gpg-agent, which detach and outlive the desktop:
    # off by default (a user's own ~/.config setting still wins).
    xml=$run/xdg/xfce4/xfconf/xfce-perchannel-xml
    mkdir -p "$xml"
    cat >"$xml/xfce4-session.xml" <<'EOF'
<?xml version="1.0" encoding="UTF-8"?>
<channel name="xfce4-session" version="1.0">
  <property name="startup" type="empty">
    <property name="ssh-agent" type="empty"><property name="enabled" type="bool" value="false"/></property>
    <property name="gpg-agent" type="empty"><property name="enabled" type="bool" value="false"/></property>
  </property>
</channel>
EOF
    XDG_CONFIG_DIRS=$run/xdg:${XDG_CONFIG_DIRS:-/etc/xdg}
    export XDG_CONFIG_DIRS
fi
umask "$session_umask"

# The session starter: a fresh shell (exec'd after the unset, so even its /proc environ holds
# no password) that waits for the display, runs the session and then removes the directory.
# shellcheck disable=SC2016 # expanded by that shell
sh -c '
    run=$1
    shift
    cleanup() { rm -rf "$run"; }
    trap cleanup EXIT
    trap "exit 143" TERM INT HUP # a signal to the process group: still clean up
    read -r number <"$run/display" || exit 1
    DISPLAY=":$number"
    export DISPLAY
    "$@"
' start-desktop-session "$run" "$@" </dev/null &

# No blacklist: readiness probes (the kubelet's, Atrium's) connect without authenticating and
# would get their address - often the portal's own - refused after a few of them. The
# password is random per instance (48 bits), too strong for online guessing anyway.
# shellcheck disable=SC2086 # $display_arg is empty or one word (":N")
exec Xvnc $display_arg -displayfd 3 -interface "$ip" -rfbport "$port" -nolisten tcp \
    -SecurityTypes VncAuth -PasswordFile "$run/passwd" -UseBlacklist=0 \
    -geometry "$geometry" -depth 24 -AlwaysShared -AcceptSetDesktopSize -desktop Atrium \
    3>"$run/display"
