#!/usr/bin/env bash
# build.sh: build, test, tag and push the pytorch-byoc images.
#
#   ./build.sh build [train|serve|all] [--flavor gpu|cpu] [--base IMAGE] [--tag T]
#   ./build.sh push  [train|serve|all] [--flavor gpu|cpu] [--region R | --registry HOST]
#   ./build.sh test  [pytest args...]      unit + container tests (builds missing images)
#   ./build.sh demo                        train on the bundled sample, serve, predict a photo
#   ./build.sh lint                        hadolint + shellcheck
#   ./build.sh --help
#
# Run ./build.sh --help for every option and environment variable.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PROJECT=pytorch-byoc
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/pyproject.toml" | head -n1)
# Debian's docker client has BuildKit built in; a newer client without the
# buildx plugin refuses DOCKER_BUILDKIT=1 (see ../shared/recipes/README.md).
DOCKER=${DOCKER:-$(if [ -x /usr/bin/docker ]; then echo /usr/bin/docker; else command -v docker || echo docker; fi)}
VENV=${BYOC_VENV:-$ROOT/.venv}
VENV_SDK3=${BYOC_SDK3_VENV:-$ROOT/.venv-sdk3}

usage() {
  cat <<EOF
build.sh: build, test, tag and push the $PROJECT images (version $VERSION)

Commands:
  build [train|serve|all]   build the images (default: all)
  push  [train|serve|all]   tag with version, git sha and latest; push to Amazon ECR
                            (or to --registry HOST)
  test  [pytest args]       set up .venv (and .venv-sdk3), build missing CPU-or-GPU images,
                            run the tests: with no args, all of them (tests/*/*_sdk3.py
                            with SDK v3 in .venv-sdk3, the rest with .venv); args naming
                            a *_sdk3.py file first run in .venv-sdk3, others in .venv
  demo                      build, train on the bundled sample data, serve, predict a photo
  lint                      hadolint on docker/*.Dockerfile, shellcheck on the shell scripts
  tags                      print the tags that push would use (no side effects)

Options:
  --flavor gpu|cpu          image flavour (default: \$FLAVOR, else gpu if nvidia-smi sees a GPU, else cpu)
  --base IMAGE              base image (default: \$BASE_IMAGE, else the flavour's default:
                              gpu: $(default_base gpu)
                              cpu: $(default_base cpu))
  --tag T                   local tag (default: the flavour, e.g. $PROJECT-train:cpu)
  --ca-bundle FILE          CA bundle for pip inside the build, passed as a build secret
                            (never stored in a layer; default: \$PIP_CERT)
  --torch-index-url URL     extra wheel index for torch (e.g. a CPU-only one you can reach)
  --with-apex               gpu flavour: also build NVIDIA apex (needs GitHub access)
  --region R                AWS region for push (default: AWS config / \$AWS_REGION)
  --registry HOST[:PORT]    push to this registry instead of ECR (no AWS calls)
  --dry-run                 print the docker commands instead of running them
  -h, --help                this help

Environment: FLAVOR, BASE_IMAGE, PIP_CERT, DOCKER (docker client), BYOC_VENV (test venv),
             BYOC_SDK3_VENV (the SageMaker SDK v3 test venv, default .venv-sdk3).
EOF
}

die() { echo "build.sh: error: $*" >&2; exit 1; }
log() { echo "build.sh: $*" >&2; }

default_base() {
  case $1 in
    gpu) echo "nvidia/cuda:13.0.1-base-ubuntu24.04" ;;
    cpu) echo "debian:bookworm-slim" ;;
  esac
}

detect_flavor() {
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then echo gpu; else echo cpu; fi
}

# ------------------------------------------------------------------ arguments
CMD=""; TARGETS=(); EXTRA=()
FLAVOR=${FLAVOR:-}; BASE=${BASE_IMAGE:-}; TAG=""; CA_BUNDLE=${PIP_CERT:-}
TORCH_INDEX_URL=""; WITH_APEX=0; REGION=""; REGISTRY=""; DRY_RUN=0

parse_args() {
  [ $# -gt 0 ] || { usage; exit 2; }
  case $1 in
    -h|--help|help) usage; exit 0 ;;
    build|push|test|demo|lint|tags) CMD=$1; shift ;;
    *) die "unknown command '$1' (see --help)" ;;
  esac
  while [ $# -gt 0 ]; do
    case $1 in
      train|serve) [ "$CMD" = test ] && { EXTRA+=("$1"); shift; continue; }; TARGETS+=("$1") ;;
      all) TARGETS+=(train serve) ;;
      --flavor) need_value "$@"; FLAVOR=$2; shift ;;
      --flavor=*) FLAVOR=${1#*=} ;;
      --base) need_value "$@"; BASE=$2; shift ;;
      --base=*) BASE=${1#*=} ;;
      --tag) need_value "$@"; TAG=$2; shift ;;
      --tag=*) TAG=${1#*=} ;;
      --ca-bundle) need_value "$@"; CA_BUNDLE=$2; shift ;;
      --ca-bundle=*) CA_BUNDLE=${1#*=} ;;
      --torch-index-url) need_value "$@"; TORCH_INDEX_URL=$2; shift ;;
      --with-apex) WITH_APEX=1 ;;
      --region) need_value "$@"; REGION=$2; shift ;;
      --region=*) REGION=${1#*=} ;;
      --registry) need_value "$@"; REGISTRY=$2; shift ;;
      --registry=*) REGISTRY=${1#*=} ;;
      --dry-run) DRY_RUN=1 ;;
      -h|--help) usage; exit 0 ;;
      *) if [ "$CMD" = test ]; then EXTRA+=("$1"); else die "unknown argument '$1' (see --help)"; fi ;;
    esac
    shift
  done
  [ ${#TARGETS[@]} -gt 0 ] || TARGETS=(train serve)
  FLAVOR=${FLAVOR:-$(detect_flavor)}
  case $FLAVOR in gpu|cpu) ;; *) die "--flavor must be gpu or cpu, not '$FLAVOR'" ;; esac
  BASE=${BASE:-$(default_base "$FLAVOR")}
  TAG=${TAG:-$FLAVOR}
  [[ $TAG =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]] || die "invalid tag '$TAG' (docker tags: letters, digits, _ . -, at most 128)"
  if [ "$WITH_APEX" = 1 ] && [ "$FLAVOR" != gpu ]; then die "--with-apex needs --flavor gpu (apex's fused kernels are CUDA)"; fi
  if [ -n "$CA_BUNDLE" ] && [ ! -r "$CA_BUNDLE" ]; then die "CA bundle '$CA_BUNDLE' is not a readable file"; fi
  return 0
}

need_value() { [ $# -ge 2 ] && [ -n "$2" ] && [ "${2#--}" = "$2" ] || die "$1 needs a value"; }

# --dry-run prints the command (arguments with spaces in quotes) instead.
run() {
  if [ "$DRY_RUN" = 0 ]; then "$@"; return; fi
  local a out=()
  for a in "$@"; do if [[ $a == *[[:space:]]* ]]; then out+=("'$a'"); else out+=("$a"); fi; done
  echo "${out[*]}"
}

image_name() { echo "$PROJECT-$1"; }                # train -> pytorch-byoc-train
local_ref() { echo "$(image_name "$1"):$TAG"; }

git_sha() { git -C "$ROOT" rev-parse --short=12 HEAD 2>/dev/null || echo unknown; }

# The tags a pushed image gets: version, git sha and latest; the cpu flavour
# carries a -cpu suffix so both flavours live in one repository.
push_tags() {
  local suffix=""; [ "$FLAVOR" = cpu ] && suffix=-cpu
  echo "$VERSION$suffix"
  echo "git-$(git_sha)$suffix"
  echo "latest$suffix"
}

require_docker() {
  command -v "$DOCKER" >/dev/null 2>&1 || die "docker client '$DOCKER' not found: install Docker (e.g. your distribution's docker.io package)"
  [ "$DRY_RUN" = 1 ] || "$DOCKER" info >/dev/null 2>&1 || die "the docker daemon does not answer ('$DOCKER info' failed): start it, or check that you may use it"
}

# ------------------------------------------------------------------ build
build_one() {
  local target=$1 args
  args=(build -f "$ROOT/docker/$target.Dockerfile" -t "$(local_ref "$target")"
        --build-arg "BASE_IMAGE=$BASE" --build-arg "FLAVOR=$FLAVOR"
        --build-arg "VERSION=$VERSION" --build-arg "GIT_SHA=$(git_sha)"
        --build-arg "WITH_APEX=$WITH_APEX")
  [ -n "$TORCH_INDEX_URL" ] && args+=(--build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL")
  [ -n "$CA_BUNDLE" ] && args+=(--secret "id=ca,src=$CA_BUNDLE")
  [ -n "${BYOC_PIPCONF:-}" ] && args+=(--secret "id=pipconf,src=$BYOC_PIPCONF")
  args+=("$ROOT")
  log "building $(local_ref "$target") (flavour $FLAVOR, base $BASE)"
  local t0=$SECONDS
  DOCKER_BUILDKIT=1 run "$DOCKER" "${args[@]}"
  [ "$DRY_RUN" = 1 ] || log "built $(local_ref "$target") in $((SECONDS - t0)) s, $("$DOCKER" image inspect -f '{{.Size}}' "$(local_ref "$target")" | awk '{printf "%.2f GB", $1/1e9}')"
}

cmd_build() {
  require_docker
  local t
  for t in "${TARGETS[@]}"; do build_one "$t"; done
}

# ------------------------------------------------------------------ push
# REGION from the flag, the environment or the AWS config.
resolve_region() {
  command -v aws >/dev/null 2>&1 || die "the AWS CLI ('aws') is not installed: pip install awscli, or push elsewhere with --registry HOST"
  REGION=${REGION:-${AWS_REGION:-${AWS_DEFAULT_REGION:-$(aws configure get region 2>/dev/null || true)}}}
  [ -n "$REGION" ] || die "no AWS region: pass --region or set one with 'aws configure set region ...'"
}

ecr_registry() {
  local account
  account=$(aws sts get-caller-identity --region "$REGION" --query Account --output text 2>/dev/null) \
    || die "no AWS credentials: 'aws sts get-caller-identity' failed (configure credentials or use --registry HOST)"
  echo "$account.dkr.ecr.$REGION.amazonaws.com"
}

ensure_ecr_repository() {
  local repo=$1
  if aws ecr describe-repositories --region "$REGION" --repository-names "$repo" >/dev/null 2>&1; then
    log "ECR repository $repo exists"
  else
    aws ecr create-repository --region "$REGION" --repository-name "$repo" \
      --image-scanning-configuration scanOnPush=true >/dev/null \
      || die "could not create ECR repository $repo"
    log "created ECR repository $repo (scan on push)"
  fi
}

cmd_push() {
  require_docker
  local registry=$REGISTRY t tag
  if [ -z "$registry" ]; then
    resolve_region
    registry=$(ecr_registry)
    for t in "${TARGETS[@]}"; do ensure_ecr_repository "$(image_name "$t")"; done
    local password
    password=$(aws ecr get-login-password --region "$REGION") || die "aws ecr get-login-password failed"
    if [ "$DRY_RUN" = 1 ]; then
      echo "$DOCKER login --username AWS --password-stdin $registry"
    else
      printf '%s' "$password" | "$DOCKER" login --username AWS --password-stdin "$registry" >/dev/null \
        || die "docker login to $registry failed"
    fi
  fi
  for t in "${TARGETS[@]}"; do
    [ "$DRY_RUN" = 1 ] || "$DOCKER" image inspect "$(local_ref "$t")" >/dev/null 2>&1 \
      || die "image $(local_ref "$t") not found: run ./build.sh build $t --flavor $FLAVOR first"
    while read -r tag; do
      run "$DOCKER" tag "$(local_ref "$t")" "$registry/$(image_name "$t"):$tag"
      run "$DOCKER" push "$registry/$(image_name "$t"):$tag"
    done < <(push_tags)
  done
}

cmd_tags() {
  local t tag
  for t in "${TARGETS[@]}"; do
    while read -r tag; do echo "$(image_name "$t"):$tag"; done < <(push_tags)
  done
}

# ------------------------------------------------------------------ test
ensure_venv() {
  if [ ! -x "$VENV/bin/python" ]; then
    log "creating the test venv $VENV"
    python3 -m venv "$VENV"
  fi
  # The stamp skips pip when requirements did not change since the last run.
  local stamp="$VENV/.byoc-requirements.sha"
  local want; want=$(cat "$ROOT"/requirements-dev*.txt "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    "$VENV/bin/pip" install -q -r "$ROOT/requirements-dev.txt"
    "$VENV/bin/pip" install -q --no-deps -r "$ROOT/requirements-dev-nodeps.txt"
    "$VENV/bin/pip" install -q --no-deps --no-build-isolation -e "$ROOT"
    echo "$want" >"$stamp"
  fi
}

# SageMaker SDK v3 clashes with the v2 pin and the pyarrow pin (requirements-sdk3.txt says
# how): its own venv, reusing .venv's packages through a .pth file, installs only the rest.
ensure_venv_sdk3() {
  if [ ! -x "$VENV_SDK3/bin/python" ]; then
    log "creating the SDK v3 test venv $VENV_SDK3"
    python3 -m venv "$VENV_SDK3"
  fi
  local site main_site
  site=$("$VENV_SDK3/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  main_site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  echo "$main_site" >"$site/byoc-main-venv.pth"
  local stamp="$VENV_SDK3/.byoc-requirements.sha"
  local want; want=$(cat "$ROOT"/requirements-sdk3.txt "$VENV/.byoc-requirements.sha" 2>/dev/null | sha256sum | cut -d' ' -f1)
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    local t0=$SECONDS
    "$VENV_SDK3/bin/pip" install -q -r "$ROOT/requirements-sdk3.txt"
    log "SDK v3 venv ready in $((SECONDS - t0)) s"
    echo "$want" >"$stamp"
  fi
}

ensure_images() {
  local t missing=()
  for t in "${TARGETS[@]}"; do
    "$DOCKER" image inspect "$(local_ref "$t")" >/dev/null 2>&1 || missing+=("$t")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local wanted=("${TARGETS[@]}")
  TARGETS=("${missing[@]}"); cmd_build; TARGETS=("${wanted[@]}")
}

# Tools the tests start on the host: a local registry for the push test, Java
# for TorchServe. Installed with apt when we may; otherwise those tests say so.
ensure_test_tools() {
  local missing=()
  [ -x /usr/bin/docker-registry ] || missing+=(docker-registry)
  command -v java >/dev/null 2>&1 || missing+=(openjdk-17-jre-headless)
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing ${missing[*]} (apt)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    log "missing ${missing[*]}: install them (apt-get install ${missing[*]}) or the tests that need them fail"
  fi
}

cmd_test() {
  ensure_venv
  ensure_test_tools
  if command -v "$DOCKER" >/dev/null 2>&1 && "$DOCKER" info >/dev/null 2>&1; then
    ensure_images
  else
    log "no docker daemon: container tests will fail (or skip outside CI)"
  fi
  BYOC_TRAIN_IMAGE=$(local_ref train); BYOC_SERVE_IMAGE=$(local_ref serve)
  export BYOC_TRAIN_IMAGE BYOC_SERVE_IMAGE BYOC_FLAVOR=$FLAVOR DOCKER
  cd "$ROOT"
  # tests/*/*_sdk3.py need SDK v3 (.venv-sdk3); everything else runs with .venv (SDK v2).
  if [[ ${EXTRA[0]:-} == *_sdk3.py* ]]; then
    ensure_venv_sdk3
    exec "$VENV_SDK3/bin/python" -m pytest "${EXTRA[@]}"
  fi
  if [ ${#EXTRA[@]} -gt 0 ]; then
    exec "$VENV/bin/python" -m pytest "${EXTRA[@]}"
  fi
  ensure_venv_sdk3
  local rc=0
  "$VENV/bin/python" -m pytest || rc=$?
  log "SageMaker SDK v3 tests ($VENV_SDK3)"
  "$VENV_SDK3/bin/python" -m pytest tests/*/test_*_sdk3.py || rc=$?
  return $rc
}

# ------------------------------------------------------------------ demo / lint
cmd_demo() {
  require_docker
  cmd_build
  BYOC_TRAIN_IMAGE=$(local_ref train); BYOC_SERVE_IMAGE=$(local_ref serve)
  export BYOC_TRAIN_IMAGE BYOC_SERVE_IMAGE DOCKER
  exec bash "$ROOT/scripts/demo.sh"
}

cmd_lint() {
  ensure_venv
  local rc=0
  "$VENV/bin/hadolint" --config "$ROOT/.hadolint.yaml" "$ROOT"/docker/*.Dockerfile || rc=1
  "$VENV/bin/shellcheck" -x -P "$ROOT" "$ROOT/build.sh" "$ROOT"/.ci/run "$ROOT"/docker/*/*.sh "$ROOT"/docker/*/*/*.sh "$ROOT"/scripts/*.sh "$ROOT"/bench/*.sh || rc=1
  [ $rc = 0 ] && log "lint clean"
  return $rc
}

main() {
  parse_args "$@"
  case $CMD in
    build) cmd_build ;;
    push) cmd_push ;;
    test) cmd_test ;;
    demo) cmd_demo ;;
    lint) cmd_lint ;;
    tags) cmd_tags ;;
  esac
}

main "$@"
