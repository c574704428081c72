#!/usr/bin/env bash
# Builds Veil's SEV-SNP guest image, reproducibly, from Debian packages and crates.io only:
#
#   OVMF.fd      AMD SEV firmware (OvmfPkg/AmdSev/AmdSevX64.dsc, the build that checks the
#                kernel, initrd and command line against the measured hashes page), built
#                from Debian trixie's edk2 source package, pinned by SHA-256
#   vmlinuz      Debian trixie's kernel (SEV guest driver and configfs-tsm as modules)
#   initrd.img   busybox, /init, seven kernel modules and a static veil-server
#   cmdline      the kernel command line, exactly as given to QEMU's -append
#   build-info.json  the SHA-256 of every artefact and input, and the expected launch
#                MEASUREMENT for 1, 2 and 4 vCPUs (EPYC-v4, QEMU) with guest features
#                0x1 and 0x21
#
#   scripts/build-image.sh [--out DIR]     (default: image/, ignored by git)
#
# Pinned inputs are in scripts/image/pins. Downloads and the OVMF build are cached in
# $VEIL_IMAGE_CACHE (default ~/.cache/veil-image), keyed by the pinned hashes, so that a
# second build, or a new clone on the same machine, reuses them. docs/deploy-snp.md says
# how to launch the result and what only SNP hardware can confirm.
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"

out=image
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out="${2:?--out needs a directory}"; shift 2 ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "build-image: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

# The kernel command line. Serial console only; a panic (the server, PID 1, exited) resets
# the VM at once.
cmdline="console=ttyS0 panic=-1 oops=panic loglevel=4"
# The modules /init loads, in dependency order, from the kernel package.
modules=(fs/configfs/configfs drivers/virt/coco/tsm drivers/virt/coco/sev-guest/sev-guest
  net/core/failover drivers/net/net_failover drivers/net/virtio_net drivers/block/virtio_blk)
# Bumped whenever the OVMF recipe below changes, so that a cached build is not reused.
ovmf_recipe=2
# Where the OVMF is built: one fixed absolute path on every machine (see build_ovmf).
ovmf_work=/tmp/veil-ovmf-build

say() { echo "build-image: $*" >&2; }
die() { say "$*"; exit 1; }
sha256() { sha256sum "$1" | cut -d' ' -f1; }
started=$(date +%s)

scripts/setup.sh --image

cache="${VEIL_IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/veil-image}"
mkdir -p "$cache/debs" "$cache/src" "$cache/ovmf" "$out"
out="$(cd "$out" && pwd)"

pin() { # pin KIND NAME -> "version|sha256" or "sha256"
  local line
  line="$(grep -v '^#' scripts/image/pins | grep "^$1|$2|" | head -1)" || die "no pin for $1 $2"
  echo "${line#"$1|$2|"}"
}

# A private apt configuration for Debian trixie: it reads and writes only under the cache,
# never the machine's own sources or package database.
apt_dir="$cache/apt"
apt_opts=(-o "Dir::Etc::SourceList=$apt_dir/sources.list" -o Dir::Etc::SourceParts=/dev/null
  -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache"
  -o Dir::State::status=/dev/null -o APT::Sandbox::User=root -q=2)
apt_updated=0
apt_update() {
  [ "$apt_updated" = 1 ] && return
  mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main" \
    >"$apt_dir/sources.list"
  apt-get "${apt_opts[@]}" update || die "apt-get update for Debian trixie failed"
  apt_updated=1
}

fetch_deb() { # fetch_deb PACKAGE -> path of the verified .deb in the cache
  local pkg="$1" p version want file have
  p="$(pin deb "$pkg")"; version="${p%%|*}"; want="${p#*|}"
  file="$cache/debs/${pkg}_${version#*:}_amd64.deb"
  if [ ! -f "$file" ] || [ "$(sha256 "$file")" != "$want" ]; then
    apt_update
    have="$(apt-cache "${apt_opts[@]}" show "$pkg=$version" 2>/dev/null | sed -n 's/^Version: //p' | head -1)"
    if [ "$have" != "$version" ]; then
      die "Debian trixie no longer has $pkg $version (it has: $(apt-cache "${apt_opts[@]}" policy "$pkg" | sed -n 's/^ *Candidate: //p')); update scripts/image/pins"
    fi
    (cd "$cache/debs" && rm -f "${pkg}"_*.deb && apt-get "${apt_opts[@]}" download "$pkg=$version") ||
      die "cannot download $pkg $version"
    mv "$cache/debs/${pkg}_"*"_amd64.deb" "$file.part" && mv "$file.part" "$file"
  fi
  have="$(sha256 "$file")"
  [ "$have" = "$want" ] || die "$pkg $version has SHA-256 $have, pinned $want"
  echo "$file"
}

fetch_src() { # fetch_src FILE -> path of the verified source tarball in the cache
  # Debian's pool, straight: the package registry serves the tarballs (its .dsc is not
  # always reachable from the build machines), and the pin is the signed Sources index's
  # SHA-256 for each.
  local name="$1" want file have
  want="$(pin src "$name")"
  file="$cache/src/$name"
  if [ ! -f "$file" ] || [ "$(sha256 "$file")" != "$want" ]; then
    curl -sSf --retry 3 -o "$file.part" "http://deb.debian.org/debian/pool/main/e/edk2/${name//+/%2b}" ||
      die "cannot download $name from Debian's pool"
    mv "$file.part" "$file"
  fi
  have="$(sha256 "$file")"
  [ "$have" = "$want" ] || die "$name has SHA-256 $have, pinned $want"
  echo "$file"
}

build_ovmf() { # build_ovmf -> path of the cached OVMF.fd
  local orig debian key dir work t0
  orig="$(fetch_src edk2_2025.02.orig.tar.xz)"
  debian="$(fetch_src edk2_2025.02-8+deb13u1.debian.tar.xz)"
  key="$(printf '%s %s %s' "$(sha256 "$orig")" "$(sha256 "$debian")" "$ovmf_recipe $ovmf_work" | sha256sum | cut -c1-16)"
  dir="$cache/ovmf/$key"
  if [ -f "$dir/OVMF.fd" ]; then
    say "OVMF: cached ($dir)"
    echo "$dir/OVMF.fd"
    return
  fi
  say "OVMF: building AmdSevX64 from Debian's edk2 2025.02 source (about 4 minutes on 2 cores)"
  t0=$(date +%s)
  # Always the same absolute directory, whatever the cache's location or the user: edk2's
  # GenFw writes each module's build path into its PE image (the CodeView entry and the
  # export directory), so another path gives another OVMF.fd and another measurement.
  # A lock keeps two builds on one machine out of each other's way.
  work="$ovmf_work"
  exec 9>"$work.lock"
  flock -w 3600 9 || die "another OVMF build holds $work.lock"
  rm -rf "$work" && mkdir -p "$work"
  tar -xf "$orig" -C "$work" --strip-components=1
  tar -xf "$debian" -C "$work"
  (
    cd "$work"
    # Debian's patches, in its order (brotlicompress-disable.diff keeps BaseTools from
    # asking for a submodule the source package leaves out).
    grep -v '^#' debian/patches/series | while read -r p; do
      [ -n "$p" ] && patch -p1 -s -N <"debian/patches/$p"
    done
    export PYTHON3_ENABLE=TRUE PYTHON_COMMAND=python3 SOURCE_DATE_EPOCH=0
    make -s -C BaseTools -j"$(nproc)" >build-basetools.log 2>&1 || { tail -30 build-basetools.log; exit 1; }
    # shellcheck disable=SC1091
    set +u; . ./edksetup.sh >/dev/null; set -u
    # The AmdSev platform embeds GRUB for its encrypted-disk boot, which a direct kernel
    # boot never uses: an empty file stands in for it.
    : >OvmfPkg/AmdSev/Grub/grub.efi
    build -q -a X64 -t GCC5 -b RELEASE -n "$(nproc)" -p OvmfPkg/AmdSev/AmdSevX64.dsc \
      >build-ovmf.log 2>&1 || { tail -40 build-ovmf.log; exit 1; }
  ) || die "the OVMF build failed (log in $work)"
  mkdir -p "$dir"
  cp "$work/Build/AmdSev/RELEASE_GCC5/FV/OVMF.fd" "$dir/OVMF.fd.part"
  mv "$dir/OVMF.fd.part" "$dir/OVMF.fd"
  rm -rf "$work"
  say "OVMF: built in $(( $(date +%s) - t0 )) s"
  echo "$dir/OVMF.fd"
}

build_server() { # build_server -> path of a static veil-server
  # glibc, linked statically: `-C target-feature=+crt-static` on veil-server's final link
  # only, against libc.a and libstdc++.a (the Rust toolchain here has no musl target).
  # Every dependency is the workspace's own dev-profile build, unchanged, so the image
  # costs no second build of llama.cpp; cargo links the usual dynamic veil-server again
  # at the next `cargo build`. The binary is stripped in the initrd.
  local exe="$out/.veil-server.static"
  cargo rustc --locked -q -p veil-server --bin veil-server -- -C target-feature=+crt-static >&2 ||
    die "the static veil-server did not link"
  cp target/debug/veil-server "$exe"
  if readelf -d "$exe" | grep -q '(NEEDED)'; then
    die "veil-server is not statically linked: it needs $(readelf -d "$exe" | sed -n 's/.*Shared library: //p' | tr '\n' ' ')"
  fi
  echo "$exe"
}

say "kernel and busybox from Debian trixie"
kernel_deb="$(fetch_deb linux-image-6.12.117+deb13-amd64)"
busybox_deb="$(fetch_deb busybox-static)"
ovmf="$(build_ovmf)"
server="$(build_server)"
cargo build --locked -q -p veil-client --bin veil
veil="target/debug/veil"

say "initrd"
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
kpkg="$stage/kernel" root="$stage/root"
mkdir -p "$kpkg" "$root"/{bin,dev,etc,lib/modules,proc,run,sys,tmp}
dpkg-deb -x "$kernel_deb" "$kpkg"
dpkg-deb -x "$busybox_deb" "$stage/busybox"
kver="$(ls "$kpkg/usr/lib/modules")"
install -m 0755 "$stage/busybox/usr/bin/busybox" "$root/bin/busybox" 2>/dev/null ||
  install -m 0755 "$stage/busybox/bin/busybox" "$root/bin/busybox"
install -m 0755 scripts/image/init "$root/init"
install -m 0755 scripts/image/udhcpc.script "$root/etc/udhcpc.script"
for m in "${modules[@]}"; do
  xz -dc "$kpkg/usr/lib/modules/$kver/kernel/$m.ko.xz" >"$root/lib/modules/$(basename "$m").ko"
  chmod 0644 "$root/lib/modules/$(basename "$m").ko"
done
install -m 0755 "$server" "$root/bin/veil-server"
strip --strip-all "$root/bin/veil-server"
chmod 0755 "$root"/{bin,dev,etc,lib,lib/modules,proc,run,sys}
chmod 1777 "$root/tmp"
# Reproducible: every timestamp 0, owner root, names sorted in the C locale, gzip
# without a name or time.
find "$root" -exec touch -h -d @0 {} +
(cd "$root" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc --reproducible -R 0:0) |
  gzip -9n >"$out/initrd.img.part"
mv "$out/initrd.img.part" "$out/initrd.img"
cp "$kpkg/boot/vmlinuz-$kver" "$out/vmlinuz"
cp "$ovmf" "$out/OVMF.fd"
cp "$root/bin/veil-server" "$out/veil-server"
printf '%s' "$cmdline" >"$out/cmdline"
rm -f "$server"

say "expected measurements"
measure() { # measure VCPUS FEATURES
  "$veil" measure snp --ovmf "$out/OVMF.fd" --kernel "$out/vmlinuz" --initrd "$out/initrd.img" \
    --append "$cmdline" --vcpus "$1" --vcpu-type EPYC-v4 --vmm qemu --guest-features "$2"
}
measurements=()
for n in 1 2 4; do
  for gf in 0x1 0x21; do
    measurements+=("$n" "$gf" "$(measure "$n" "$gf")")
  done
done

python3 - "$out/build-info.json" "$cmdline" "$kver" \
  "$(pin deb linux-image-6.12.117+deb13-amd64)" "$(pin deb busybox-static)" \
  "$(pin src edk2_2025.02.orig.tar.xz)" "$(pin src edk2_2025.02-8+deb13u1.debian.tar.xz)" \
  "$out" "${measurements[@]}" <<'EOF'
import hashlib, json, os, sys
path, cmdline, kver, kernel_pin, busybox_pin, orig, debian, out = sys.argv[1:9]
rest = sys.argv[9:]
def sha(name):
    with open(os.path.join(out, name), "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()
info = {
    "format": "veil-image-build-info/1",
    "artefacts": {n: sha(n) for n in ["OVMF.fd", "vmlinuz", "initrd.img", "veil-server"]},
    "cmdline": cmdline,
    "inputs": {
        "kernel": {"package": "linux-image-" + kver, "version": kernel_pin.split("|")[0],
                   "deb_sha256": kernel_pin.split("|")[1]},
        "busybox": {"package": "busybox-static", "version": busybox_pin.split("|")[0],
                    "deb_sha256": busybox_pin.split("|")[1]},
        "edk2": {"version": "2025.02-8+deb13u1", "platform": "OvmfPkg/AmdSev/AmdSevX64.dsc",
                 "build": "RELEASE_GCC5", "orig_sha256": orig, "debian_sha256": debian},
    },
    "launch": {"vmm": "qemu", "vcpu_type": "EPYC-v4", "kernel_hashes": True},
    "measurements": [
        {"vcpus": int(rest[i]), "guest_features": rest[i + 1], "measurement": rest[i + 2]}
        for i in range(0, len(rest), 3)
    ],
}
with open(path + ".part", "w") as f:
    json.dump(info, f, indent=2, sort_keys=True)
    f.write("\n")
os.replace(path + ".part", path)
EOF
say "done in $(( $(date +%s) - started )) s: $out (build-info.json)"
