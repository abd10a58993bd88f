#!/bin/sh
# The installer of the ATVM watcher service (docs/install.md): shipped as the executable `install`
# at the top of the dist tarball, and run from the same staged tree by `cargo xtask install`
# and `cargo xtask uninstall`, so every install path is this one script. POSIX sh plus
# coreutils, grep, sed, find and util-linux's flock; no Rust needed.
#
# Replacing the old script install is the normal case. One run holds a lock (flock on the
# destination's root directory: `/`, or the --destdir) from start to end; a second run meanwhile
# refuses at once (exit 4). Under the lock it first finishes whatever an interrupted run left
# (see the journal below), then installs in three phases:
#   1. check everything, write nothing: the payload against its SHA256SUMS, every target, the
#      tools; a scratch copy of one binary in the package root must run (noexec). Any problem
#      stops here with the old install as it was;
#   2. stage: every new file as a temp file beside its target (.<name>.atvm-new, verified by
#      hash), a backup beside every target that exists (.<name>.atvm-old, a hard link), and a
#      kept copy of every operator file that will be replaced in
#      <package-root>/.replaced/<UTC-timestamp>/ (units: in a sibling of the unit directory,
#      <unit-dir>.replaced/<UTC-timestamp>/; both 0700);
#   3. commit: renames only — the temps over their targets, retired files (atvm_run_watcher.py,
#      old unit copies in the package root) into .replaced/, the manifest last.
# Nothing of the operator's is ever deleted. A file at a target path is "ours" (replaced
# without a copy) when the previous install's manifest (.install-manifest, sha256sum format)
# lists it with its current hash, or it already has the new content; anything else is the
# operator's. The inventory (vm-inventory.md) and the env file are created when absent and
# never overwritten.
#
# The journal, <package-root>/.install-journal/ (0700), makes every interruption recoverable,
# a SIGKILL included: it holds the plan (every target, its temp, backup and kept copy), each
# directory the run created (recorded before it is made) and the phase (staging, `commit`,
# `committed`). A failure, a signal, or the next run after a kill reads it: before `committed`
# it rolls back (a target whose temp is gone was renamed: its backup goes back; temps,
# backups, kept copies and created directories go), after it it rolls forward (the backups
# go). Both are idempotent, so a recovery that is itself killed is finished by the next run.
#
# Test hook: ATVM_INSTALL_TEST_PAUSE=<point> with ATVM_INSTALL_TEST_PAUSE_DIR=<dir> makes the
# run write <dir>/reached at that point and wait for <dir>/go (the tests kill it there). Points:
# checked, stage:<n>, staged, commit:<n>, committed, cleanup:<n>, recover:<n>. Unset, it costs a
# string comparison.

set -u
umask 022
LC_ALL=C
export LC_ALL
PROG=install
NL='
'
OIFS=$IFS

usage() {
    printf '%s\n' \
        'usage: ./install [--destdir DIR] [--prefix DIR]' \
        '       ./install --uninstall [--destdir DIR] [--prefix DIR]' \
        '       ./install --recover [--destdir DIR] [--prefix DIR]' \
        '' \
        'Installs the ATVM watcher service from this directory (run it as root):' \
        '  binaries and <name>.sh links  PREFIX/                   (default /opt/atvm-watcher-service)' \
        '  unit files                    /etc/systemd/system/' \
        '  completions and man pages     /usr/local/share/{bash-completion,zsh,fish,man}/' \
        '  env file (0600, if absent)    /etc/atvm-run-watcher.env' \
        '  state root (0700)             /var/lib/atvm-run-watcher/' \
        'Files it replaces that it did not install itself (the old scripts, old unit files) are kept' \
        'in PREFIX/.replaced/<UTC-time>/ and /etc/systemd/system.replaced/<UTC-time>/; it lists them.' \
        'Nothing is changed unless every check passes. An install that was interrupted (even killed)' \
        'is put back by the next run, which then installs; --recover only puts it back.' \
        '' \
        '  --destdir DIR  install under the staging root DIR (not /; created if absent) instead of' \
        '                 onto this machine; then systemd, the --help check of the installed' \
        '                 binaries and /root/atvm-watcher-service are left alone. The DESTDIR' \
        '                 environment variable is not read: set without --destdir, it is refused' \
        '  --prefix DIR   the package root as the controller sees it' \
        '  --uninstall    remove what the install wrote (by its manifest); keep the env file, the' \
        '                 state root, an edited inventory and .replaced/' \
        '  --recover      finish what an interrupted install left (put the previous install back,' \
        '                 or complete one that had put every file in place), then stop' \
        '' \
        'Exit status: 0 done, 1 nothing changed (a check failed, or a failure was rolled back) or a' \
        'step after the install failed, 2 bad arguments, 4 another run holds the lock.'
}

say() { printf '%s: %s\n' "$PROG" "$*"; }
# `arg` quoted for a shell command line an operator copies (a path with blanks stays one word).
shq() { printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")"; }
err() { printf '%s: %s\n' "$PROG" "$*" >&2; }
usage_error() {
    err "$* (see --help)"
    exit 2
}
exists() { [ -e "$1" ] || [ -L "$1" ]; }

# `path` made absolute-and-plain without looking at the file system: no `.`, `..`, `//` or
# trailing `/` (builtins only: nothing external runs before the tool check).
normalize() {
    _rest=$1 _out=
    while [ -n "$_rest" ]; do
        case $_rest in
        */*) _c=${_rest%%/*} _rest=${_rest#*/} ;;
        *) _c=$_rest _rest= ;;
        esac
        case $_c in
        '' | .) ;;
        ..) _out=${_out%/*} ;;
        *) _out=$_out/$_c ;;
        esac
    done
    printf '%s\n' "${_out:-/}"
}

# ---------------------------------------------------------------------------------------
# Arguments (builtins only)
# ---------------------------------------------------------------------------------------
MODE=install
DEST=
HAVE_DEST=no
PREFIX=/opt/atvm-watcher-service
set_mode() {
    [ "$MODE" = install ] || [ "$MODE" = "$1" ] || usage_error "--uninstall and --recover exclude each other"
    MODE=$1
}
while [ $# -gt 0 ]; do
    case $1 in
    --destdir)
        [ $# -ge 2 ] || usage_error "--destdir needs a value"
        DEST=$2 HAVE_DEST=yes
        shift 2
        ;;
    --destdir=*) DEST=${1#*=} HAVE_DEST=yes && shift ;;
    --prefix)
        [ $# -ge 2 ] || usage_error "--prefix needs a value"
        PREFIX=$2
        shift 2
        ;;
    --prefix=*) PREFIX=${1#*=} && shift ;;
    --uninstall) set_mode uninstall && shift ;;
    --recover) set_mode recover && shift ;;
    -h | --help)
        usage
        exit 0
        ;;
    *) usage_error "unknown option $1" ;;
    esac
done

if [ "$HAVE_DEST" = no ] && [ -n "${DESTDIR-}" ]; then
    # A rehearsal's DESTDIR left in the shell must never turn the real install into a staging
    # install (or, the other way round, a packager's DESTDIR into a real one).
    usage_error "DESTDIR is set ($DESTDIR), but ./install installs into a staging root only with --destdir: unset DESTDIR to install onto this machine, or give --destdir"
fi
if [ "$HAVE_DEST" = yes ]; then
    [ -n "$DEST" ] || usage_error "--destdir needs a directory (a staging root other than /; leave --destdir out to install onto this machine)"
    # '|' separates the fields of the plan below; a newline would split a path.
    case $DEST in *"|"* | *"$NL"*) usage_error "--destdir must not contain '|' or a newline" ;; esac
    case $DEST in /*) ;; *) DEST=$(pwd)/$DEST ;; esac
    DEST=$(normalize "$DEST")
    if [ "$DEST" = / ] || { [ -d "$DEST" ] && [ "$(cd -P -- "$DEST" && pwd -P)" = / ]; }; then
        usage_error "--destdir must be a staging root other than / (it is / here; leave --destdir out to install onto this machine)"
    fi
fi
while :; do case $PREFIX in ?*/) PREFIX=${PREFIX%/} ;; *) break ;; esac; done
# The prefix goes into unit files (ExecStart=) and a sed replacement: keep it plain.
case $PREFIX in
/ | *[!A-Za-z0-9._/-]* | *//* | */./* | */../* | */. | */..) usage_error "--prefix must be a plain absolute path, not $PREFIX" ;;
/*) ;;
*) usage_error "--prefix must be an absolute path, not $PREFIX" ;;
esac

case $0 in */*) SRC=${0%/*} ;; *) SRC=. ;; esac
SRC=$(cd -- "$SRC" && pwd) || exit 1

# ---------------------------------------------------------------------------------------
# Tools: every external command this script runs, checked before the first one runs.
# ---------------------------------------------------------------------------------------
TOOLS="sha256sum sed grep sort find readlink dirname basename date id stat cp mv ln rm mkdir rmdir chmod chown flock"
[ "$HAVE_DEST" = no ] && TOOLS="$TOOLS systemctl"
[ -n "${ATVM_INSTALL_TEST_PAUSE-}" ] && TOOLS="$TOOLS sleep"
MISSING=
for tool in $TOOLS; do
    command -v "$tool" >/dev/null 2>&1 || MISSING="$MISSING  the $tool command is missing$NL"
done
if [ -n "$MISSING" ]; then
    err "cannot run: commands it needs are not on the PATH ($PATH); nothing was changed:"
    printf '%s' "$MISSING" >&2
    exit 1
fi

IS_ROOT=no
[ "$(id -u)" = 0 ] && IS_ROOT=yes
if [ "$HAVE_DEST" = no ] && [ "$IS_ROOT" = no ]; then
    err "run as root (or give --destdir for a staging root); nothing was changed"
    exit 1
fi

ROOT=$DEST$PREFIX
UNITDIR=$DEST/etc/systemd/system
# What an enable link points at: the unit's path on the controller, as `systemctl enable`.
SYS_UNITDIR=/etc/systemd/system
ENVFILE=$DEST/etc/atvm-run-watcher.env
STATE=$DEST/var/lib/atvm-run-watcher
SHARE=$DEST/usr/local/share
MANIFEST=$ROOT/.install-manifest
J=$ROOT/.install-journal
LEGACY=/root/atvm-watcher-service
INVENTORY=vm-inventory.md
ENV_EXAMPLE=atvm-run-watcher.env.example
INVENTORY_EXAMPLE=vm-inventory.md.example
# Files of the old script install that nothing replaces under the same name: retired into
# .replaced/ (the unit names are added once the payload is known).
RETIRED=atvm_run_watcher.py

# `path` relative to the destdir: how the manifest names it (so `cd <destdir>/ &&
# sha256sum -c <manifest>` checks an install, `cd / && …` on the controller).
rel() { printf '%s\n' "${1#"$DEST"/}"; }

hash_of() {
    _h=$(sha256sum <"$1") || return 1
    printf '%s\n' "${_h%% *}"
}
hash_text() {
    _h=$(printf '%s' "$1" | sha256sum) || return 1
    printf '%s\n' "${_h%% *}"
}

own() {
    # root:root when installing as root; a staging root built by a user stays the user's.
    [ "$IS_ROOT" = no ] || chown -h 0:0 "$1"
}

# The test hook (see the top of this file).
pause() {
    [ "${ATVM_INSTALL_TEST_PAUSE-}" = "$1" ] && [ -n "${ATVM_INSTALL_TEST_PAUSE_DIR-}" ] || return 0
    printf '%s\n' "$1" >"$ATVM_INSTALL_TEST_PAUSE_DIR/reached"
    while [ ! -e "$ATVM_INSTALL_TEST_PAUSE_DIR/go" ]; do sleep 0.01 9<&-; done
}

# ---------------------------------------------------------------------------------------
# The lock: one run per destination, from here to the end.
# ---------------------------------------------------------------------------------------
LOCKDIR=${DEST:-/}
if [ ! -d "$LOCKDIR" ]; then
    mkdir -p -- "$LOCKDIR" || {
        err "cannot create the staging root $LOCKDIR"
        exit 1
    }
fi
command exec 9<"$LOCKDIR" || {
    err "cannot open $LOCKDIR to lock it"
    exit 1
}
if ! LOCK_ERR=$(flock -x -n 9 2>&1); then
    if [ -z "$LOCK_ERR" ]; then
        err "another ./install (or --uninstall, --recover) is running for $LOCKDIR: it holds the lock on that directory; nothing was changed (run this again once it has finished)"
        exit 4
    fi
    err "cannot lock $LOCKDIR: $LOCK_ERR"
    exit 1
fi

# ---------------------------------------------------------------------------------------
# The journal and recovery
# ---------------------------------------------------------------------------------------
JOURNAL=no   # yes while $J is ours to clean up
RECOVERED=   # what recover did: scratch, back or forward

# Names for the plan line in kind/t: its temp and backup.
names() {
    _dir=${t%/*}
    _base=${t##*/}
    _tmp=$_dir/.$_base.atvm-new
    _old=$_dir/.$_base.atvm-old
}

phase() {
    _p=
    [ -f "$J/phase" ] && read -r _p <"$J/phase"
    printf '%s\n' "$_p"
}

set_phase() {
    printf '%s\n' "$1" >"$J/phase.new" && mv -f -- "$J/phase.new" "$J/phase"
}

# Roll back an unfinished run (phase empty: staging; `commit`: renames may have happened).
roll_back() {
    _ph=$1 _ok=yes _put=0 _gone=0 _i=0
    while IFS='|' read -r kind mode src t status copy want; do
        _i=$((_i + 1))
        if [ "$kind" = retire ]; then
            if [ "$_ph" = commit ] && ! exists "$t" && exists "$copy"; then
                if mv -T -- "$copy" "$t"; then _put=$((_put + 1)); else
                    err "could not move $copy back to $t"
                    _ok=no
                fi
            fi
        else
            names
            # rename(2) is atomic: once the commit began, a target whose temp is gone was
            # replaced (a target with no backup was new).
            if [ "$_ph" = commit ] && ! exists "$_tmp" && { [ "$status" = new ] || exists "$_old"; }; then
                if [ "$status" = new ]; then
                    if exists "$t"; then
                        if rm -f -- "$t"; then _gone=$((_gone + 1)); else _ok=no; fi
                    fi
                elif mv -fT -- "$_old" "$t"; then
                    _put=$((_put + 1))
                else
                    err "could not put back $t from $_old"
                    _ok=no
                fi
            else
                # Not replaced: the backup goes first, so a recovery killed half way never
                # sees a backup without its temp.
                if [ "$status" != new ] && exists "$_old"; then rm -f -- "$_old" || _ok=no; fi
                if exists "$_tmp"; then
                    if rm -f -- "$_tmp"; then _gone=$((_gone + 1)); else _ok=no; fi
                fi
            fi
            if [ "$status" = operator ] && exists "$copy"; then
                if rm -f -- "$copy"; then _gone=$((_gone + 1)); else _ok=no; fi
            fi
        fi
        pause "recover:$_i"
    done <"$J/plan"
    ROLLED="$_put files put back, $_gone files of the unfinished install removed"
    [ "$_ok" = yes ]
}

# Finish a run that had put every file in place: its backups go, the state root gets its mode.
roll_forward() {
    _ok=yes _n=0 _i=0
    while IFS='|' read -r kind mode src t status copy want; do
        _i=$((_i + 1))
        [ "$kind" = retire ] && continue
        names
        if [ "$status" != new ] && exists "$_old"; then
            if rm -f -- "$_old"; then _n=$((_n + 1)); else _ok=no; fi
        fi
        if exists "$_tmp"; then rm -f -- "$_tmp" || _ok=no; fi
        pause "cleanup:$_i"
    done <"$J/plan"
    # 0700: the state root holds the runs' commands and results (docs/watcher-service.md
    # refuses a group/world-writable one).
    if [ -d "$STATE" ]; then
        # shellcheck disable=SC2015 # either failing is the failure
        chmod 0700 "$STATE" && own "$STATE" || {
            err "cannot set the mode of $STATE to 0700"
            _ok=no
        }
    fi
    ROLLED="$_n backups removed"
    [ "$_ok" = yes ]
}

# Put right what the run that wrote $J left: roll back or forward, remove the journal and
# (rolling back) the directories that run created. Returns non-zero, keeping the journal for
# the next try, when something could not be put back.
recover() {
    trap '' INT TERM HUP
    _dirs=
    _was=
    [ -f "$J/dest" ] && read -r _was <"$J/dest"
    [ -f "$J/dirs" ] && [ "$_was" = "$DEST" ] && _dirs=$(sed -n '1!G;h;$p' "$J/dirs")
    if [ ! -f "$J/plan" ]; then
        RECOVERED=scratch
    elif [ "$(phase)" = committed ]; then
        RECOVERED=forward
        roll_forward || return 1
        report_moved
    else
        RECOVERED=back
        roll_back "$(phase)" || return 1
    fi
    drop_journal || return 1
    if [ "$RECOVERED" != forward ]; then
        IFS=$NL
        set -f
        for _d in $_dirs; do rmdir -- "$_d" 2>/dev/null; done
        set +f
        IFS=$OIFS
    fi
    return 0
}

# Remove the journal: the list of created directories first (a half-removed journal must never
# make the next run remove a directory a finished install holds), then the plan, then the rest.
drop_journal() {
    if ! rm -f -- "$J/dirs" "$J/plan" || ! rm -rf -- "$J"; then
        err "could not remove the journal $J"
        return 1
    fi
    JOURNAL=no
}

# shellcheck disable=SC2317,SC2329 # called by the trap
on_signal() {
    trap '' INT TERM HUP
    if [ "$JOURNAL" = yes ] && recover; then
        case $RECOVERED in
        forward) err "interrupted after every file was in place: the new install is complete; run ./install again to finish the steps after it" ;;
        back) err "interrupted; the previous install was put back; nothing was changed" ;;
        *) err "interrupted; nothing was changed" ;;
        esac
    elif [ "$JOURNAL" = yes ]; then
        err "interrupted, and could not put everything back (see above): run ./install --recover"
    else
        err "interrupted; nothing was changed"
    fi
    exit 1
}

failed() { # message headline
    err "$1"
    if recover; then
        err "$2"
    else
        err "and could not put everything back (see above); the journal $J is kept: fix the cause and run ./install --recover"
    fi
    exit 1
}
stage_failed() { failed "$*" "nothing was changed (the files staged so far were removed)"; }
commit_failed() { failed "$*" "the previous install was put back; nothing was changed"; }

# What the journal's run moved aside (its plan), as the install lists it.
report_moved() {
    _moved=0
    while IFS='|' read -r kind mode src t status copy want; do
        if [ "$kind" = retire ]; then
            _line="$t -> $copy (retired)"
        elif [ "$status" = operator ]; then
            _line="$t -> $copy"
        else
            continue
        fi
        [ $_moved = 0 ] && say "moved aside (nothing deleted; the old copies are kept):"
        _moved=$((_moved + 1))
        say "  $_line"
    done <"$J/plan"
    [ $_moved = 0 ] && say "nothing moved aside: no operator files were in the way"
}

# A run that was interrupted (killed: nothing could clean up) left $J: finish it first.
recover_at_start() {
    if [ -L "$J" ] || [ ! -d "$J" ]; then
        err "$J is in the way: the install keeps its journal there, and this is not a directory it made; move it away, then run ./install again"
        exit 1
    fi
    if [ -f "$J/plan" ]; then
        _fmt=
        [ -f "$J/format" ] && read -r _fmt <"$J/format"
        if [ "$_fmt" != 1 ]; then
            err "$J is not a journal this installer can read (format '${_fmt:-none}'); nothing was changed: run ./install --recover from the version that was interrupted"
            exit 1
        fi
        _was=
        [ -f "$J/dest" ] && read -r _was <"$J/dest"
        if [ "$_was" != "$DEST" ]; then
            if [ -n "$_was" ]; then _how="--destdir $_was"; else _how="no --destdir"; fi
            err "$J was left by an install with $_how; nothing was changed: run ./install --recover with $_how"
            exit 1
        fi
    fi
    say "an earlier install here was interrupted before it finished (its journal: $J):"
    if ! recover; then
        err "could not put everything back (see above); the journal $J is kept: fix the cause and run ./install --recover"
        exit 1
    fi
    trap - INT TERM HUP
    case $RECOVERED in
    scratch) say "  it had only begun its checks: removed its scratch directory; nothing else had changed" ;;
    back) say "  it had not put every file in place: put the previous install back as it was ($ROLLED)" ;;
    forward) say "  it had put every file in place: finished it ($ROLLED); what it moved aside is listed above" ;;
    esac
    # The unit files on disk changed (back, or forward to ones systemd has not loaded yet).
    if [ "$RECOVERED" != scratch ] && [ "$HAVE_DEST" = no ]; then
        if systemctl daemon-reload 9<&-; then say "  systemd reloaded"; else
            err "systemctl daemon-reload failed; run it by hand"
            RELOAD_FAILED=yes
        fi
    fi
}

RELOAD_FAILED=no
if exists "$J"; then
    recover_at_start
fi

if [ "$MODE" = recover ]; then
    [ -z "$RECOVERED" ] && say "nothing to recover: no interrupted install left a journal in $J"
    [ "$RECOVERED" = forward ] && [ "$HAVE_DEST" = no ] &&
        say "run ./install again for the steps after an install (moving $LEGACY aside, the --help check)"
    [ "$RELOAD_FAILED" = no ] || exit 1
    exit 0
fi

# ---------------------------------------------------------------------------------------
# Uninstall
# ---------------------------------------------------------------------------------------
if [ "$MODE" = uninstall ]; then
    if [ ! -f "$MANIFEST" ]; then
        err "no install manifest ($MANIFEST): nothing of this installer's to remove"
        exit 1
    fi
    status=0
    removed=0
    # The inventory goes only if it is still the example (before the example is removed).
    if [ -f "$ROOT/$INVENTORY" ] && [ -f "$ROOT/$INVENTORY_EXAMPLE" ] &&
        [ "$(hash_of "$ROOT/$INVENTORY")" = "$(hash_of "$ROOT/$INVENTORY_EXAMPLE")" ]; then
        rm -f "$ROOT/$INVENTORY" && removed=$((removed + 1))
    elif [ -e "$ROOT/$INVENTORY" ]; then
        say "kept $ROOT/$INVENTORY (edited by the operator)"
    fi
    while read -r sum path; do
        file=$DEST/$path
        dir=$(dirname "$file")
        base=$(basename "$file")
        if [ -f "$file" ] && [ ! -L "$file" ]; then
            if [ "$(hash_of "$file")" = "$sum" ]; then
                rm -f "$file" || status=1
                removed=$((removed + 1))
            else
                say "kept $file (changed since it was installed)"
            fi
        fi
        if [ "$dir" = "$ROOT" ] && [ -L "$file.sh" ] && [ "$(readlink "$file.sh")" = "$base" ]; then
            rm -f "$file.sh" || status=1
            removed=$((removed + 1))
        elif [ "$dir" = "$ROOT" ] && exists "$file.sh"; then
            say "kept $file.sh (not the link the install made: the operator's own)"
        fi
        if [ "$dir" = "$UNITDIR" ]; then
            for link in "$UNITDIR"/*.wants/"$base"; do
                if [ -L "$link" ] && [ "$(readlink "$link")" = "$SYS_UNITDIR/$base" ]; then
                    rm -f "$link" || status=1
                    removed=$((removed + 1))
                    rmdir "$(dirname "$link")" 2>/dev/null
                fi
            done
        fi
    done <"$MANIFEST"
    rm -f "$MANIFEST" || status=1
    rmdir "$ROOT" 2>/dev/null && say "removed $ROOT"
    say "removed $removed files (binaries, links, units, completions, man pages, examples)"
    say "kept $ENVFILE, $STATE and any .replaced/ directory"
    if [ "$HAVE_DEST" = no ]; then
        systemctl daemon-reload 9<&- || {
            err "systemctl daemon-reload failed; run it by hand"
            status=1
        }
    fi
    exit $status
fi

# ---------------------------------------------------------------------------------------
# Phase 1: check everything. Problems and the plan are kept in variables, so nothing is
# written before every check has passed (the one exception: the scratch journal directory,
# where a copy of a binary proves that programs run in the package root; it is removed).
# ---------------------------------------------------------------------------------------
if [ "$HAVE_DEST" = yes ]; then
    say "installing into the staging root $DEST (not the controller itself)"
fi
PROBLEMS=
problem() {
    case $NL$PROBLEMS in *"$NL$*$NL"*) return 0 ;; esac
    PROBLEMS="$PROBLEMS$*$NL"
}
show_problems() { # headline
    err "$1"
    printf '%s' "$PROBLEMS" | sed 's/^/  /' >&2
}

# The payload: this directory as `cargo xtask dist` / `cargo xtask install` staged it, every
# file listed with its hash in SHA256SUMS; what the list names is what gets installed.
SUMS=$SRC/SHA256SUMS
NAMES=
UNITS=
SHARED=
EXAMPLES=
HELP_OK=no
if [ ! -f "$SUMS" ]; then
    problem "$SUMS is missing: run ./install from a complete unpacked tarball"
else
    while IFS= read -r line; do
        sum=${line%%  *}
        path=${line#*  }
        case $sum in *[!0-9a-f]*) sum= ;; esac
        case $path in
        /* | *..* | *[!A-Za-z0-9@._/+-]*) sum= ;;
        esac
        if [ ${#sum} != 64 ] || [ "$path" = "$line" ]; then
            problem "$SUMS has a line that is not a file's hash: $line"
            continue
        fi
        f=$SRC/$path
        if [ -L "$f" ] || [ ! -f "$f" ]; then
            problem "$f is missing (SHA256SUMS lists it): the tarball is incomplete"
            continue
        elif [ "$(hash_of "$f")" != "$sum" ]; then
            problem "$f is not the file SHA256SUMS lists (damaged or changed)"
            continue
        fi
        case $path in
        bin/*/*) ;;
        bin/*) NAMES="$NAMES ${path#bin/}" ;;
        units/*/*) ;;
        units/*.in)
            u=${path#units/}
            UNITS="$UNITS ${u%.in}"
            ;;
        share/*) SHARED="$SHARED${path#share/}$NL" ;;
        examples/"$ENV_EXAMPLE" | examples/"$INVENTORY_EXAMPLE") EXAMPLES="$EXAMPLES ${path#examples/}" ;;
        esac
    done <"$SUMS"
    [ -n "$NAMES" ] || problem "$SUMS lists no binaries (bin/): run ./install from a complete unpacked tarball"
    [ -n "$UNITS" ] || problem "$SUMS lists no unit templates (units/*.in)"
    for f in "$ENV_EXAMPLE" "$INVENTORY_EXAMPLE"; do
        case " $EXAMPLES " in *" $f "*) ;; *) problem "$SRC/examples/$f is missing (not in SHA256SUMS)" ;; esac
    done
    HELP_OK=yes
    for name in $NAMES; do
        # A binary that does not start here (wrong architecture, missing library) stops the
        # install before anything is replaced.
        "$SRC/bin/$name" --help >/dev/null 2>&1 9<&- || {
            problem "$SRC/bin/$name --help failed: this build does not run here"
            HELP_OK=no
        }
    done
fi
for unit in $UNITS; do RETIRED="$RETIRED $unit"; done

render() { sed "s|@PACKAGE_ROOT@|$PREFIX|g" "$1"; }

# A directory we will create or write in: it, or its nearest existing ancestor, must be a
# writable directory (`test -w` also fails on a read-only file system, even for root).
CHECKED="|"
need_dir() {
    case $CHECKED in *"|$1|"*) return 0 ;; esac
    CHECKED="$CHECKED$1|"
    _d=$1
    while ! exists "$_d"; do _d=${_d%/*} && _d=${_d:-/}; done
    if [ ! -d "$_d" ]; then
        problem "$_d is in the way: not a directory"
    elif [ ! -w "$_d" ]; then
        problem "cannot write in $_d"
    fi
}

# Directories the install owns are never followed when they are links: a kept copy written
# through one would land outside the destination.
for d in "$ROOT/.replaced" "$UNITDIR.replaced"; do
    if [ -L "$d" ]; then
        problem "$d is a symbolic link: the install keeps replaced files there and does not follow links; move it away"
    elif exists "$d" && [ ! -d "$d" ]; then
        problem "$d is in the way: not a directory"
    fi
done

# Where the operator's copy of `target` goes.
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
n=1
while exists "$ROOT/.replaced/$STAMP" || exists "$UNITDIR.replaced/$STAMP"; do
    n=$((n + 1))
    STAMP=$(date -u +%Y%m%dT%H%M%SZ)-$n
done
REPL_ROOT=$ROOT/.replaced/$STAMP
REPL_UNITS=$UNITDIR.replaced/$STAMP
replaced_path() {
    case $1 in
    "$ROOT"/*) _copy=$REPL_ROOT/${1#"$ROOT"/} ;;
    "$UNITDIR"/*) _copy=$REPL_UNITS/${1#"$UNITDIR"/} ;;
    *) _copy=$REPL_ROOT/$(rel "$1") ;;
    esac
}

OLD_MANIFEST=
[ -f "$MANIFEST" ] && [ ! -L "$MANIFEST" ] && OLD_MANIFEST=$MANIFEST

# What is at `target` now (in _status): new (nothing), ours, or operator (kept in .replaced/).
classify() { # kind want target
    if [ -L "$3" ]; then
        if [ "$1" = link ] && [ "$(readlink "$3")" = "$2" ]; then _status=ours; else _status=operator; fi
    elif [ -d "$3" ]; then
        problem "$3 is in the way: a directory where a file goes"
        _status=bad
    elif [ -f "$3" ]; then
        _status=operator
        if [ "$1" != link ]; then
            _h=$(hash_of "$3")
            if [ "$_h" = "$2" ]; then
                _status=ours
            elif [ -n "$OLD_MANIFEST" ] && grep -Fxq "$_h  $(rel "$3")" "$OLD_MANIFEST"; then
                _status=ours
            fi
        fi
    elif [ -e "$3" ]; then
        problem "$3 is in the way: not a regular file"
        _status=bad
    else
        _status=new
    fi
}

# One line of the plan: kind|mode|src|target|status|copy in .replaced (or -)|hash (or -).
PLAN=
plan() { # kind mode src target want [status]
    _dir=${4%/*}
    _base=${4##*/}
    need_dir "$_dir"
    if exists "$_dir/.$_base.atvm-old"; then
        problem "$_dir/.$_base.atvm-old was left by an interrupted install that kept no journal in $J: if that install used another --prefix, run ./install --recover --prefix <that prefix>"
    fi
    if [ $# -ge 6 ]; then _status=$6; else classify "$1" "$5" "$4"; fi
    _copy=-
    if [ "$_status" = operator ]; then
        replaced_path "$4"
        need_dir "${_copy%/*}"
    fi
    PLAN="$PLAN$1|$2|$3|$4|$_status|$_copy|$5$NL"
}

MANIFEST_TEXT=
manifest_add() { # hash target
    MANIFEST_TEXT="$MANIFEST_TEXT$1  $(rel "$2")$NL"
}

for name in $NAMES; do
    h=$(hash_of "$SRC/bin/$name")
    plan file 0755 "$SRC/bin/$name" "$ROOT/$name" "$h"
    manifest_add "$h" "$ROOT/$name"
    # `<name>.sh` for callers of the old scripts.
    plan link - "$name" "$ROOT/$name.sh" "$name"
done
for f in $EXAMPLES; do
    h=$(hash_of "$SRC/examples/$f")
    plan file 0644 "$SRC/examples/$f" "$ROOT/$f" "$h"
    manifest_add "$h" "$ROOT/$f"
done
for unit in $UNITS; do
    h=$(render "$SRC/units/$unit.in" | sha256sum)
    h=${h%% *}
    plan unit 0644 "$SRC/units/$unit.in" "$UNITDIR/$unit" "$h"
    manifest_add "$h" "$UNITDIR/$unit"
    # Enable what asks to be enabled, as `systemctl enable` would: one link per
    # WantedBy= target (templates need an instance, so they are not enabled here).
    # shellcheck disable=SC2013 # WantedBy= takes a space-separated list
    for target in $(sed -n 's/^[[:space:]]*WantedBy=//p' "$SRC/units/$unit.in"); do
        case $unit in
        *@.*) say "not enabling the template $unit (WantedBy=$target): it needs an instance" ;;
        *) plan link - "$SYS_UNITDIR/$unit" "$UNITDIR/$target.wants/$unit" "$SYS_UNITDIR/$unit" ;;
        esac
    done
done
IFS=$NL
set -f
for f in $SHARED; do
    IFS=$OIFS
    h=$(hash_of "$SRC/share/$f")
    plan file 0644 "$SRC/share/$f" "$SHARE/$f" "$h"
    manifest_add "$h" "$SHARE/$f"
done
set +f
IFS=$OIFS

# The operator's own files: created when absent, never overwritten.
if exists "$ROOT/$INVENTORY"; then
    KEPT_INVENTORY=yes
else
    KEPT_INVENTORY=no
    plan file 0644 "$SRC/examples/$INVENTORY_EXAMPLE" "$ROOT/$INVENTORY" "$(hash_of "$SRC/examples/$INVENTORY_EXAMPLE")"
fi
ENV_WARNING=
if exists "$ENVFILE"; then
    KEPT_ENV=yes
    # Kept as it is, but it holds the webhook: say how to make it root-only.
    if _m=$(stat -L -c '%a %u' -- "$ENVFILE" 2>/dev/null); then
        _fix=
        case ${_m% *} in *00) ;; *) _fix="chmod 0600 $ENVFILE" ;; esac
        if [ "$IS_ROOT" = yes ] && [ "${_m#* }" != 0 ]; then
            _fix="chown root:root $ENVFILE${_fix:+ && $_fix}"
        fi
        [ -n "$_fix" ] && ENV_WARNING="$ENVFILE is mode ${_m% *}, owner uid ${_m#* }: it holds the webhook and should be root's alone (0600); run: $_fix"
    else
        ENV_WARNING="cannot read the mode of $ENVFILE (a dangling link?): it should be a file only root can read (0600)"
    fi
else
    KEPT_ENV=no
    plan file 0600 "$SRC/examples/$ENV_EXAMPLE" "$ENVFILE" "$(hash_of "$SRC/examples/$ENV_EXAMPLE")"
fi

# Old files nothing replaces under their name: retired into .replaced/.
for f in $RETIRED; do
    t=$ROOT/$f
    if [ -L "$t" ] || [ -f "$t" ]; then
        need_dir "$REPL_ROOT"
        PLAN="${PLAN}retire|-|-|$t|-|$REPL_ROOT/$f|-$NL"
    elif [ -e "$t" ]; then
        say "left $t alone: not a file"
    fi
done

# Drop-ins of our units (<unit>.d/*.conf, and instance ones, <name>@<build>.service.d/): one
# that sets ExecStart= or names the old watcher or an old .sh would run the old scripts in
# place of the binaries (every watcher would fail to start), so it is retired into the kept
# copies like the scripts; any other is kept and listed with a warning to review it.
OLD_RE='atvm_run_watcher\.py'
for name in $NAMES; do OLD_RE="$OLD_RE|$(printf '%s' "$name" | sed 's/[.]/\\./g')\.sh"; done
DROPIN_WARNINGS=
for unit in $UNITS; do
    case $unit in
    *@.service) dirs="$UNITDIR/${unit%%@*}@*.service.d" ;;
    *) dirs="$UNITDIR/$unit.d" ;;
    esac
    # shellcheck disable=SC2086 # $dirs is a glob, expanded on purpose
    for d in $dirs; do
        if [ ! -d "$d" ] || [ -L "$d" ]; then continue; fi
        for f in "$d"/*.conf; do
            exists "$f" || continue
            case $f in *"|"* | *"$NL"*)
                DROPIN_WARNINGS="$DROPIN_WARNINGS$f (a name this installer cannot move)$NL"
                continue
                ;;
            esac
            if grep -Eq '^[[:space:]]*ExecStart[[:space:]]*=' "$f" || grep -Eq "$OLD_RE" "$f"; then
                replaced_path "$f"
                need_dir "${_copy%/*}"
                PLAN="${PLAN}retire|-|-|$f|-|$_copy|-$NL"
            else
                DROPIN_WARNINGS="$DROPIN_WARNINGS$f$NL"
            fi
        done
    done
done

if exists "$STATE" && [ ! -d "$STATE" ]; then
    problem "$STATE is in the way: not a directory"
fi
need_dir "$STATE"

# The manifest itself, last; an old one is ours whatever it says.
MANIFEST_TEXT=$(printf '%s' "$MANIFEST_TEXT" | sort -k2)$NL
MANIFEST_HASH=$(hash_text "$MANIFEST_TEXT")
if [ -n "$OLD_MANIFEST" ]; then
    plan file 0644 "$J/manifest" "$MANIFEST" "$MANIFEST_HASH" ours
else
    plan file 0644 "$J/manifest" "$MANIFEST" "$MANIFEST_HASH"
fi

if [ "$HAVE_DEST" = no ] && exists "$LEGACY"; then
    need_dir "${LEGACY%/*}"
fi

# Kept copies from an older install that others can read (they may hold an old unit's
# Environment=MATTERMOST_ATVM_WEBHOOK=…).
REPL_WARNINGS=
for d in "$ROOT/.replaced" "$UNITDIR.replaced"; do
    if [ -L "$d" ] || [ ! -d "$d" ] || ! _m=$(stat -c '%a' -- "$d"); then continue; fi
    case $_m in *00) ;; *) REPL_WARNINGS="$REPL_WARNINGS$d is mode $_m: the copies kept there may hold what old files held (a webhook in an old unit, say); run: chmod 0700 $d$NL" ;; esac
done

# The journal directory, made now: a copy of a binary in it must run where the binaries will
# (a package root mounted noexec fails here, not after the commit).
MADE_DIRS=
make_journal() {
    _d=$ROOT
    while ! exists "$_d"; do
        MADE_DIRS="$MADE_DIRS$_d$NL" # innermost first
        _d=${_d%/*}
    done
    mkdir -p -- "$ROOT" 2>/dev/null && mkdir -m 0700 -- "$J" 2>/dev/null || return 1
    JOURNAL=yes
    printf '1\n' >"$J/format" && printf '%s\n' "$DEST" >"$J/dest" &&
        printf '%s' "$MADE_DIRS" | sed -n '1!G;h;$p' >"$J/dirs"
}
# Undo make_journal after a failed check, whatever of the journal got written.
unmake_journal() {
    [ "$JOURNAL" = no ] || rm -rf -- "$J" || err "could not remove $J: remove it by hand"
    JOURNAL=no
    IFS=$NL
    set -f
    for _d in $MADE_DIRS; do rmdir -- "$_d" 2>/dev/null; done
    set +f
    IFS=$OIFS
}
probe() {
    _first=${NAMES# }
    _first=${_first%% *}
    # shellcheck disable=SC2015 # either failing is the failure
    cp "$SRC/bin/$_first" "$J/probe" && chmod 0755 "$J/probe" || {
        problem "cannot write in $J (a full disk?)"
        return
    }
    if ! "$J/probe" --version >/dev/null 2>&1 9<&-; then
        problem "programs cannot run from $ROOT: a copy of $_first there failed to start ($J/probe --version); is the file system mounted noexec?"
    fi
    rm -f -- "$J/probe"
}
trap on_signal INT TERM HUP
if make_journal; then
    [ "$HELP_OK" = yes ] && [ -n "$NAMES" ] && probe
elif [ -z "$PROBLEMS" ]; then
    # (with other problems listed, they say why)
    problem "cannot create the journal $J (is the disk full?)"
fi

if [ -n "$PROBLEMS" ]; then
    unmake_journal
    trap - INT TERM HUP
    show_problems "cannot install; nothing was changed:"
    exit 1
fi
pause checked

# ---------------------------------------------------------------------------------------
# Phase 2: stage. The plan goes into the journal first; every directory made is recorded
# before it is made; a failure (or a signal, or the next run after a kill) undoes it all.
# ---------------------------------------------------------------------------------------
# Write `text` to `file` and read it back.
write_checked() { # file text
    printf '%s' "$2" >"$1" && [ "$(hash_of "$1")" = "$(hash_text "$2")" ]
}

# The directory `dir` (mode 0700 for the kept copies), recorded in the journal before it is made.
ensure_dir() { # dir [mode]
    [ -d "$1" ] && return 0
    ensure_dir "${1%/*}" || return 1
    printf '%s\n' "$1" >>"$J/dirs" || return 1
    case $1 in
    "$ROOT/.replaced" | "$ROOT/.replaced/"* | "$UNITDIR.replaced" | "$UNITDIR.replaced/"*) mkdir -m 0700 -- "$1" || return 1 ;;
    *) mkdir -- "$1" || return 1 ;;
    esac
}

# A second name for `from` (a hard link: nothing is copied, the mode and owner stay), or a copy
# where a link cannot be made.
keep() { # from to
    ln -P -- "$1" "$2" 2>/dev/null || cp -P -p -- "$1" "$2"
}

# shellcheck disable=SC2015 # either failing is the failure
write_checked "$J/plan.new" "$PLAN" && mv -f -- "$J/plan.new" "$J/plan" ||
    stage_failed "cannot write the journal $J/plan (a full disk?)"
write_checked "$J/manifest" "$MANIFEST_TEXT" || stage_failed "cannot write $J/manifest (a full disk?)"
i=0
while IFS='|' read -r kind mode src t status copy want; do
    i=$((i + 1))
    if [ "$kind" = retire ]; then
        ensure_dir "${copy%/*}" || stage_failed "cannot create ${copy%/*}"
        continue
    fi
    names
    ensure_dir "$_dir" || stage_failed "cannot create $_dir"
    rm -f -- "$_tmp" || stage_failed "cannot remove $_tmp"
    case $kind in
    link)
        # shellcheck disable=SC2015 # either failing is the failure
        ln -s -- "$src" "$_tmp" && [ "$(readlink "$_tmp")" = "$src" ] || stage_failed "cannot create $_tmp"
        ;;
    unit)
        # shellcheck disable=SC2015 # either failing is the failure
        render "$src" >"$_tmp" && chmod "$mode" "$_tmp" && [ "$(hash_of "$_tmp")" = "$want" ] ||
            stage_failed "cannot write $_tmp (a full disk?)"
        ;;
    *)
        # shellcheck disable=SC2015 # either failing is the failure
        cp -- "$src" "$_tmp" && chmod "$mode" "$_tmp" && [ "$(hash_of "$_tmp")" = "$want" ] ||
            stage_failed "cannot write $_tmp (a full disk?)"
        ;;
    esac
    own "$_tmp" || stage_failed "cannot set the owner of $_tmp"
    if [ "$status" != new ]; then
        keep "$t" "$_old" || stage_failed "cannot back up $t"
    fi
    if [ "$status" = operator ]; then
        ensure_dir "${copy%/*}" || stage_failed "cannot create ${copy%/*}"
        keep "$t" "$copy" || stage_failed "cannot keep a copy of $t in $copy"
    fi
    pause "stage:$i"
done <"$J/plan"
# The state root (mode 0700 once committed).
ensure_dir "$STATE" || stage_failed "cannot create $STATE"
pause staged

# ---------------------------------------------------------------------------------------
# Phase 3: commit. Renames only; a failure puts back every renamed target. A kill here leaves
# a mix of old and new files until the next run puts the old ones back from the journal.
# ---------------------------------------------------------------------------------------
set_phase commit || stage_failed "cannot write the journal $J/phase (a full disk?)"
i=0
while IFS='|' read -r kind mode src t status copy want; do
    if [ "$kind" = retire ]; then
        mv -T -- "$t" "$copy" || commit_failed "cannot move $t to ${copy%/*}/"
    else
        names
        mv -fT -- "$_tmp" "$t" || commit_failed "cannot put $t in place"
    fi
    i=$((i + 1))
    pause "commit:$i"
done <"$J/plan"
set_phase committed || commit_failed "cannot write the journal $J/phase (a full disk?)"
pause committed

# Every file is in place: from here on the install is finished, never undone.
roll_forward || {
    err "could not remove every backup (see above); the journal $J is kept: run ./install --recover"
    exit 1
}

# ---------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------
report_moved
drop_journal || err "the next ./install will remove it"
trap - INT TERM HUP
count=$(printf '%s' "$MANIFEST_TEXT" | grep -c .)
say "installed $count files: binaries (0755) and .sh links in $ROOT, units (0644) in $UNITDIR, completions and man pages in $SHARE"
say "manifest: $MANIFEST (check it with: cd $(shq "$DEST/") && sha256sum -c $(shq "$MANIFEST"))"
say "state root (0700): $STATE"
if [ "$KEPT_INVENTORY" = yes ]; then
    say "kept $ROOT/$INVENTORY (never overwritten)"
else
    say "created $ROOT/$INVENTORY from the example: list the controller's VMs there"
fi
if [ "$KEPT_ENV" = yes ]; then
    say "kept $ENVFILE (never overwritten)"
else
    say "created $ENVFILE (0600): set MATTERMOST_ATVM_WEBHOOK in it"
fi
[ -n "$ENV_WARNING" ] && err "warning: $ENV_WARNING"
[ -n "$DROPIN_WARNINGS" ] && printf '%s' "$DROPIN_WARNINGS" |
    sed "s/^/$PROG: warning: kept the drop-in /; s/\$/: it changes the new unit; review it (systemctl cat shows the unit with its drop-ins)/" >&2
[ -n "$REPL_WARNINGS" ] && printf '%s' "$REPL_WARNINGS" | sed "s/^/$PROG: warning: /" >&2

if [ "$HAVE_DEST" = yes ]; then
    say "done (--destdir: systemd, the --help check and $LEGACY left alone)"
    exit 0
fi

# ---------------------------------------------------------------------------------------
# On the controller itself: the even older install, systemd, and a last check.
# ---------------------------------------------------------------------------------------
status=0
if exists "$LEGACY"; then
    to=$LEGACY.moved-$STAMP
    if mv -T "$LEGACY" "$to"; then
        say "moved the old $LEGACY aside to $to (nothing deleted)"
    else
        err "could not move $LEGACY aside; move it by hand"
        status=1
    fi
fi
if systemctl daemon-reload 9<&-; then
    say "systemd reloaded"
else
    err "systemctl daemon-reload failed; run it by hand"
    status=1
fi
for name in $NAMES; do
    if ! "$ROOT/$name" --help >/dev/null 2>&1 9<&-; then
        err "$ROOT/$name --help failed; see docs/install.md: Roll back"
        status=1
    fi
done
[ $status = 0 ] && say "every binary answers --help; next: set MATTERMOST_ATVM_WEBHOOK in $ENVFILE and run $ROOT/atvm-run-watcher --test-post"
exit $status
