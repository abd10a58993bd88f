#!/bin/sh
# The installer of the ATVM watcher service (docs/install.md): shipped as the executable `install`
# at the top of the dist tarball, and run from the same staged tree by `cargo xtask install`
# and `cargo xtask uninstall`, so every install path is this one script. POSIX sh plus
# coreutils; no Rust needed.
#
# Replacing the old script install is the normal case. The install runs in three phases:
#   1. check everything, write nothing: any problem stops here with the old install as it was;
#   2. stage: every new file as a temp file beside its target (proves space and writability),
#      a backup beside every target that exists, and a copy of every operator file that will
#      be replaced in <package-root>/.replaced/<UTC-timestamp>/ (units: in a sibling of the
#      unit directory, <unit-dir>.replaced/<UTC-timestamp>/); a failure removes all of it;
#   3. commit: rename the temps into place, move retired files (atvm_run_watcher.py, old unit
#      copies in the package root) into .replaced/, write the manifest last; a failure puts
#      every renamed file back from its backup.
# Nothing of the operator's is ever deleted. A file at a target path is "ours" (replaced
# without a copy) when the previous install's manifest (.install-manifest, sha256sum format)
# lists it with its current hash, or it already has the new content; anything else is the
# operator's. The inventory (vm-inventory.md) and the env file are created when absent and
# never overwritten.

set -u
umask 022
PROG=install
NL='
'

usage() {
    cat <<'EOF'
usage: ./install [--destdir DIR] [--prefix DIR]
       ./install --uninstall [--destdir DIR] [--prefix DIR]

Installs the ATVM watcher service from this directory (run it as root):
  binaries and <name>.sh links  PREFIX/                   (default /opt/atvm-watcher-service)
  unit files                    /etc/systemd/system/
  completions and man pages     /usr/local/share/{bash-completion,zsh,fish,man}/
  env file (0600, if absent)    /etc/atvm-run-watcher.env
  state root (0700)             /var/lib/atvm-run-watcher/
Files it replaces that it did not install itself (the old scripts, old unit files) are kept
in PREFIX/.replaced/<UTC-time>/ and /etc/systemd/system.replaced/<UTC-time>/; it lists them.
Nothing is written unless every check passes.

  --destdir DIR  install under DIR instead of / (a staging root; the DESTDIR environment
                 variable does the same); then systemd, the --help check of the installed
                 binaries and /root/atvm-watcher-service are left alone
  --prefix DIR   the package root as the controller sees it
  --uninstall    remove what the install wrote (by its manifest); keep the env file, the
                 state root, an edited inventory and .replaced/
EOF
}

say() { printf '%s: %s\n' "$PROG" "$*"; }
err() { printf '%s: %s\n' "$PROG" "$*" >&2; }
usage_error() {
    err "$* (see --help)"
    exit 2
}

# ---------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------
MODE=install
DEST=${DESTDIR-}
HAVE_DEST=no
[ -n "$DEST" ] && HAVE_DEST=yes
PREFIX=/opt/atvm-watcher-service
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
    --uninstall) MODE=uninstall && shift ;;
    -h | --help)
        usage
        exit 0
        ;;
    *) usage_error "unknown option $1" ;;
    esac
done

if [ "$HAVE_DEST" = yes ]; then
    [ -n "$DEST" ] || usage_error "--destdir needs a non-empty directory"
    case $DEST in /*) ;; *) DEST=$(pwd)/$DEST ;; esac
    while :; do case $DEST in */) DEST=${DEST%/} ;; *) break ;; esac; done
    # '|' separates the fields of the plan below; a newline would split a path.
    case $DEST in *"|"* | *"$NL"*) usage_error "--destdir must not contain '|' or a newline" ;; esac
fi
while :; do case $PREFIX in ?*/) PREFIX=${PREFIX%/} ;; *) break ;; esac; done
# The prefix goes into unit files (ExecStart=) and a sed replacement: keep it plain.
case $PREFIX in
/ | *[!A-Za-z0-9._/-]* | *//* | */./* | */../* | */. | */..) usage_error "--prefix must be a plain absolute path, not $PREFIX" ;;
/*) ;;
*) usage_error "--prefix must be an absolute path, not $PREFIX" ;;
esac

SRC=$(cd "$(dirname "$0")" && pwd) || exit 1
ROOT=$DEST$PREFIX
UNITDIR=$DEST/etc/systemd/system
# What an enable link points at: the unit's path on the controller, as `systemctl enable`.
SYS_UNITDIR=/etc/systemd/system
ENVFILE=$DEST/etc/atvm-run-watcher.env
STATE=$DEST/var/lib/atvm-run-watcher
SHARE=$DEST/usr/local/share
MANIFEST=$ROOT/.install-manifest
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

IS_ROOT=no
[ "$(id -u)" = 0 ] && IS_ROOT=yes
own() {
    # root:root when installing as root; a staging root built by a user stays the user's.
    [ "$IS_ROOT" = no ] || chown -h 0:0 "$1"
}

# ---------------------------------------------------------------------------------------
# Uninstall
# ---------------------------------------------------------------------------------------
if [ "$MODE" = uninstall ]; then
    if [ ! -f "$MANIFEST" ]; then
        err "no install manifest ($MANIFEST): nothing of this installer's to remove"
        exit 1
    fi
    if [ "$HAVE_DEST" = no ] && [ "$IS_ROOT" = no ]; then
        err "run as root (or give --destdir)"
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
        systemctl daemon-reload || {
            err "systemctl daemon-reload failed; run it by hand"
            status=1
        }
    fi
    exit $status
fi

# ---------------------------------------------------------------------------------------
# Phase 1: check everything, write nothing (scratch files go to a private temp directory).
# ---------------------------------------------------------------------------------------
if [ "$HAVE_DEST" = yes ]; then
    say "installing into the staging root $DEST (not the controller itself)"
fi
WORK=$(mktemp -d "${TMPDIR:-/tmp}/atvm-install.XXXXXX") || exit 1
trap 'rm -rf "$WORK"' EXIT
PLAN=$WORK/plan
PROBLEMS=$WORK/problems
CHECKED="|"
: >"$PLAN"
: >"$PROBLEMS"

problem() { printf '%s\n' "$*" >>"$PROBLEMS"; }

for tool in sha256sum sed grep mktemp readlink dirname basename cp mv ln chmod chown find sort date id; do
    command -v "$tool" >/dev/null 2>&1 || problem "the $tool command is missing"
done
if [ "$HAVE_DEST" = no ] && [ "$IS_ROOT" = no ]; then
    problem "run as root (or give --destdir for a staging root)"
fi

# The payload: this directory as `cargo xtask dist` / `cargo xtask install` staged it.
NAMES=
for f in "$SRC"/bin/*; do
    [ -e "$f" ] || continue
    name=$(basename "$f")
    if [ ! -f "$f" ] || [ ! -x "$f" ]; then
        problem "$f is not an executable file"
        continue
    fi
    case $name in *[!A-Za-z0-9._-]*) problem "unexpected binary name $f" && continue ;; esac
    # A binary that does not start here (wrong architecture, missing library) stops the
    # install before anything is replaced.
    "$f" --help >/dev/null 2>&1 || problem "$f --help failed: this build does not run here"
    NAMES="$NAMES $name"
done
[ -n "$NAMES" ] || problem "no binaries in $SRC/bin: run ./install from the unpacked tarball"
UNITS=
mkdir "$WORK/units"
for f in "$SRC"/units/*.in; do
    [ -f "$f" ] || continue
    unit=$(basename "$f" .in)
    sed "s|@PACKAGE_ROOT@|$PREFIX|g" "$f" >"$WORK/units/$unit" || problem "cannot render $f"
    UNITS="$UNITS $unit"
    RETIRED="$RETIRED $unit"
done
[ -n "$UNITS" ] || problem "no unit templates in $SRC/units"
for f in "$ENV_EXAMPLE" "$INVENTORY_EXAMPLE"; do
    [ -f "$SRC/examples/$f" ] || problem "$SRC/examples/$f is missing"
done
[ -d "$SRC/share" ] || problem "$SRC/share (completions, man pages) is missing"
if [ -s "$PROBLEMS" ]; then
    err "cannot install from $SRC; nothing was written:"
    sed 's/^/  /' "$PROBLEMS" >&2
    exit 1
fi

if [ -f "$MANIFEST" ]; then
    cp "$MANIFEST" "$WORK/old-manifest" || exit 1
else
    : >"$WORK/old-manifest"
fi

# A directory we will create or write in: it, or its nearest existing ancestor, must be a
# writable directory (`test -w` also fails on a read-only file system, even for root).
need_dir() {
    case $CHECKED in *"|$1|"*) return 0 ;; esac
    CHECKED="$CHECKED$1|"
    _d=$1
    while [ ! -e "$_d" ] && [ ! -L "$_d" ]; do _d=$(dirname "$_d"); done
    if [ ! -d "$_d" ]; then
        problem "$_d is in the way: not a directory"
    elif [ ! -w "$_d" ]; then
        problem "cannot write in $_d"
    fi
}

# Where the operator's copy of `target` goes.
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
n=1
while [ -e "$ROOT/.replaced/$STAMP" ] || [ -e "$UNITDIR.replaced/$STAMP" ]; do
    n=$((n + 1))
    STAMP=$(date -u +%Y%m%dT%H%M%SZ)-$n
done
REPL_ROOT=$ROOT/.replaced/$STAMP
REPL_UNITS=$UNITDIR.replaced/$STAMP
replaced_path() {
    case $1 in
    "$ROOT"/*) printf '%s\n' "$REPL_ROOT/${1#"$ROOT"/}" ;;
    "$UNITDIR"/*) printf '%s\n' "$REPL_UNITS/${1#"$UNITDIR"/}" ;;
    *) printf '%s\n' "$REPL_ROOT/$(rel "$1")" ;;
    esac
}

# What is at `target` now: new (nothing), ours, or operator (kept in .replaced/ first).
classify() { # kind src target
    if [ -L "$3" ]; then
        if [ "$1" = link ] && [ "$(readlink "$3")" = "$2" ]; then echo ours; else echo operator; fi
    elif [ -d "$3" ]; then
        problem "$3 is in the way: a directory where a file goes"
        echo bad
    elif [ -f "$3" ]; then
        if [ "$1" = link ]; then
            echo operator
        else
            _h=$(hash_of "$3")
            if [ "$_h" = "$(hash_of "$2")" ] || grep -Fxq "$_h  $(rel "$3")" "$WORK/old-manifest"; then
                echo ours
            else
                echo operator
            fi
        fi
    elif [ -e "$3" ]; then
        problem "$3 is in the way: not a regular file"
        echo bad
    else
        echo new
    fi
}

# One line of the plan: kind|mode|src|target|status|copy in .replaced (or -).
plan() { # kind mode src target [status]
    _dir=$(dirname "$4")
    _base=$(basename "$4")
    need_dir "$_dir"
    if [ -e "$_dir/.$_base.atvm-old" ] || [ -L "$_dir/.$_base.atvm-old" ]; then
        problem "$_dir/.$_base.atvm-old was left by an interrupted install: it is the previous $_base; move it back over $4 or remove it, then run ./install again"
    fi
    if [ $# -ge 5 ]; then _status=$5; else _status=$(classify "$1" "$3" "$4"); fi
    _copy=-
    if [ "$_status" = operator ]; then
        _copy=$(replaced_path "$4")
        need_dir "$(dirname "$_copy")"
    fi
    printf '%s|%s|%s|%s|%s|%s\n' "$1" "$2" "$3" "$4" "$_status" "$_copy" >>"$PLAN"
}

: >"$WORK/manifest"
manifest_add() { # src target
    printf '%s  %s\n' "$(hash_of "$1")" "$(rel "$2")" >>"$WORK/manifest"
}

for name in $NAMES; do
    plan file 0755 "$SRC/bin/$name" "$ROOT/$name"
    manifest_add "$SRC/bin/$name" "$ROOT/$name"
    # `<name>.sh` for callers of the old scripts.
    plan link - "$name" "$ROOT/$name.sh"
done
for f in "$ENV_EXAMPLE" "$INVENTORY_EXAMPLE"; do
    plan file 0644 "$SRC/examples/$f" "$ROOT/$f"
    manifest_add "$SRC/examples/$f" "$ROOT/$f"
done
for unit in $UNITS; do
    plan file 0644 "$WORK/units/$unit" "$UNITDIR/$unit"
    manifest_add "$WORK/units/$unit" "$UNITDIR/$unit"
    # Enable what asks to be enabled, as `systemctl enable` would: one link per
    # WantedBy= target (templates need an instance, so they are not enabled here).
    # shellcheck disable=SC2013 # WantedBy= takes a space-separated list
    for target in $(sed -n 's/^[[:space:]]*WantedBy=//p' "$WORK/units/$unit"); do
        case $unit in
        *@.*) say "not enabling the template $unit (WantedBy=$target): it needs an instance" ;;
        *) plan link - "$SYS_UNITDIR/$unit" "$UNITDIR/$target.wants/$unit" ;;
        esac
    done
done
(cd "$SRC/share" && find . -type f | sort) >"$WORK/share" || problem "cannot list $SRC/share"
while read -r f; do
    f=${f#./}
    plan file 0644 "$SRC/share/$f" "$SHARE/$f"
    manifest_add "$SRC/share/$f" "$SHARE/$f"
done <"$WORK/share"

# The operator's own files: created when absent, never overwritten.
if [ -e "$ROOT/$INVENTORY" ] || [ -L "$ROOT/$INVENTORY" ]; then
    KEPT_INVENTORY=yes
else
    KEPT_INVENTORY=no
    plan file 0644 "$SRC/examples/$INVENTORY_EXAMPLE" "$ROOT/$INVENTORY"
fi
if [ -e "$ENVFILE" ] || [ -L "$ENVFILE" ]; then
    KEPT_ENV=yes
else
    KEPT_ENV=no
    plan file 0600 "$SRC/examples/$ENV_EXAMPLE" "$ENVFILE"
fi

# Old files nothing replaces under their name: retired into .replaced/.
RETIRE=
for f in $RETIRED; do
    t=$ROOT/$f
    if [ -L "$t" ] || [ -f "$t" ]; then
        need_dir "$REPL_ROOT"
        RETIRE="$RETIRE $f"
    elif [ -e "$t" ]; then
        say "left $t alone: not a file"
    fi
done

if [ -e "$STATE" ] && [ ! -d "$STATE" ]; then
    problem "$STATE is in the way: not a directory"
fi
need_dir "$STATE"

sort -k2 "$WORK/manifest" >"$WORK/manifest.sorted" || exit 1
# The manifest itself, last; an old one is ours whatever it says.
if [ -f "$MANIFEST" ] && [ ! -L "$MANIFEST" ]; then
    plan file 0644 "$WORK/manifest.sorted" "$MANIFEST" ours
else
    plan file 0644 "$WORK/manifest.sorted" "$MANIFEST"
fi

if [ "$HAVE_DEST" = no ] && { [ -e "$LEGACY" ] || [ -L "$LEGACY" ]; }; then
    need_dir "$(dirname "$LEGACY")"
fi

if [ -s "$PROBLEMS" ]; then
    err "cannot install; nothing was written:"
    sed 's/^/  /' "$PROBLEMS" >&2
    exit 1
fi

# ---------------------------------------------------------------------------------------
# Phase 2: stage. Everything written here is listed in $WORK/undo and removed on failure.
# ---------------------------------------------------------------------------------------
: >"$WORK/undo"    # files we created: temps, backups, copies
: >"$WORK/created" # directories we created, outermost first
: >"$WORK/done"    # phase 3: targets renamed into place

ensure_dir() {
    [ -d "$1" ] && return 0
    ensure_dir "$(dirname "$1")" || return 1
    mkdir "$1" || return 1
    printf '%s\n' "$1" >>"$WORK/created"
}

# Undo phase 2: remove what it wrote, newest first.
unstage() {
    sed -n '1!G;h;$p' "$WORK/undo" | while read -r f; do rm -f "$f"; done
    sed -n '1!G;h;$p' "$WORK/created" | while read -r d; do rmdir "$d" 2>/dev/null; done
    : >"$WORK/undo"
}

# Undo phase 3: put back what was renamed or moved, newest first, then undo phase 2.
rollback() {
    sed -n '1!G;h;$p' "$WORK/done" | while IFS='|' read -r what t from; do
        if [ "$what" = retired ]; then
            mv -fT "$from" "$t" || err "could not put back $t from $from"
        elif [ -n "$from" ]; then
            mv -fT "$from" "$t" || err "could not put back $t from $from"
        else
            rm -f "$t"
        fi
    done
    unstage
}

PHASE=check
# shellcheck disable=SC2317 # called by the trap
on_signal() {
    trap '' INT TERM HUP
    case $PHASE in
    stage) unstage ;;
    commit) rollback ;;
    esac
    err "interrupted; the previous install is unchanged"
    exit 1
}
trap on_signal INT TERM HUP

stage_failed() {
    err "$*"
    unstage
    err "nothing was changed (the files staged so far were removed)"
    exit 1
}

PHASE=stage
while IFS='|' read -r kind mode src t status copy; do
    dir=$(dirname "$t")
    base=$(basename "$t")
    tmp=$dir/.$base.atvm-new
    ensure_dir "$dir" || stage_failed "cannot create $dir"
    rm -f "$tmp"
    printf '%s\n' "$tmp" >>"$WORK/undo"
    if [ "$kind" = link ]; then
        ln -s "$src" "$tmp" || stage_failed "cannot create $tmp"
    else
        # shellcheck disable=SC2015 # either failing is the failure
        cp "$src" "$tmp" && chmod "$mode" "$tmp" || stage_failed "cannot write $tmp"
    fi
    own "$tmp" || stage_failed "cannot set the owner of $tmp"
    if [ "$status" != new ]; then
        printf '%s\n' "$dir/.$base.atvm-old" >>"$WORK/undo"
        cp -P -p "$t" "$dir/.$base.atvm-old" || stage_failed "cannot back up $t"
    fi
    if [ "$status" = operator ]; then
        ensure_dir "$(dirname "$copy")" || stage_failed "cannot create $(dirname "$copy")"
        printf '%s\n' "$copy" >>"$WORK/undo"
        cp -P -p "$t" "$copy" || stage_failed "cannot keep a copy of $t in $copy"
    fi
done <"$PLAN"
for f in $RETIRE; do
    ensure_dir "$REPL_ROOT" || stage_failed "cannot create $REPL_ROOT"
done

# ---------------------------------------------------------------------------------------
# Phase 3: commit. Renames only; a failure puts back every renamed target.
# ---------------------------------------------------------------------------------------
commit_failed() {
    err "$*"
    rollback
    err "the previous install was put back; nothing was changed"
    exit 1
}

PHASE=commit
while IFS='|' read -r kind mode src t status copy; do
    dir=$(dirname "$t")
    base=$(basename "$t")
    from=
    [ "$status" != new ] && from=$dir/.$base.atvm-old
    mv -fT "$dir/.$base.atvm-new" "$t" || commit_failed "cannot put $t in place"
    printf 'file|%s|%s\n' "$t" "$from" >>"$WORK/done"
done <"$PLAN"
for f in $RETIRE; do
    mv -T "$ROOT/$f" "$REPL_ROOT/$f" || commit_failed "cannot move $ROOT/$f to $REPL_ROOT/"
    printf 'retired|%s|%s\n' "$ROOT/$f" "$REPL_ROOT/$f" >>"$WORK/done"
done
# 0700: the state root holds the runs' commands and results (docs/watcher-service.md refuses a
# group/world-writable one). Last, as the only change that is not a rename: nothing after
# it can fail, so a rollback never has to restore a mode.
ensure_dir "$STATE" || commit_failed "cannot create $STATE"
# shellcheck disable=SC2015 # either failing is the failure
chmod 0700 "$STATE" && own "$STATE" || commit_failed "cannot set the mode of $STATE"
PHASE=finished
trap - INT TERM HUP

# The backups served the rollback; what was the operator's is in .replaced/ now.
while IFS='|' read -r kind mode src t status copy; do
    [ "$status" = new ] || rm -f "$(dirname "$t")/.$(basename "$t").atvm-old"
done <"$PLAN"

# ---------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------
moved=0
while IFS='|' read -r kind mode src t status copy; do
    if [ "$status" = operator ]; then
        [ $moved = 0 ] && say "moved aside (nothing deleted; the old copies are kept):"
        moved=$((moved + 1))
        say "  $t -> $copy"
    fi
done <"$PLAN"
for f in $RETIRE; do
    [ $moved = 0 ] && say "moved aside (nothing deleted; the old copies are kept):"
    moved=$((moved + 1))
    say "  $ROOT/$f -> $REPL_ROOT/$f (retired)"
done
[ $moved = 0 ] && say "nothing moved aside: no operator files were in the way"
count=$(grep -c . "$WORK/manifest.sorted")
say "installed $count files: binaries (0755) and .sh links in $ROOT, units (0644) in $UNITDIR, completions and man pages in $SHARE"
say "manifest: $MANIFEST (check it with: cd $DEST/ && sha256sum -c $MANIFEST)"
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

if [ "$HAVE_DEST" = yes ]; then
    say "done (--destdir: systemd, the --help check and $LEGACY left alone)"
    exit 0
fi

# ---------------------------------------------------------------------------------------
# On the controller itself: the even older install, systemd, and a last check.
# ---------------------------------------------------------------------------------------
status=0
if [ -e "$LEGACY" ] || [ -L "$LEGACY" ]; then
    to=$LEGACY.moved-$STAMP
    if mv -T "$LEGACY" "$to"; then
        say "moved the old $LEGACY aside to $to (nothing deleted)"
    else
        err "could not move $LEGACY aside; move it by hand"
        status=1
    fi
fi
if systemctl daemon-reload; then
    say "systemd reloaded"
else
    err "systemctl daemon-reload failed; run it by hand"
    status=1
fi
for name in $NAMES; do
    if ! "$ROOT/$name" --help >/dev/null 2>&1; then
        err "$ROOT/$name --help failed (is $PREFIX mounted noexec?); see docs: rollback"
        status=1
    fi
done
[ $status = 0 ] && say "every binary answers --help; next: set MATTERMOST_ATVM_WEBHOOK in $ENVFILE and run $ROOT/atvm-run-watcher --test-post"
exit $status
