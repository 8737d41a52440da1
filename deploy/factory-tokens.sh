#!/bin/sh
# Creates Gantry API tokens and writes each secret to a file, for services that start
# after it (deploy/compose.yaml runs it as the one-shot `tokens` service).
#
# Usage: factory-tokens.sh NAME=SCOPE[@UID]...
#   ADMIN_TOKEN_FILE  a file holding an admin token (a server's <data-dir>/admin.token)
#   GANTRY_URL        the server to ask
#   TOKENS_DIR        where to write the secrets, one file per NAME (mode 0600)
#   TOKENS_UID        owner of the files unless NAME=SCOPE@UID says otherwise
#
# A token whose file exists is kept, so running it again is harmless.
set -eu

: "${ADMIN_TOKEN_FILE:?ADMIN_TOKEN_FILE must name a file holding an admin token}"
: "${GANTRY_URL:?GANTRY_URL must be the server URL}"
: "${TOKENS_DIR:?TOKENS_DIR must be a directory for the token files}"
TOKENS_UID="${TOKENS_UID:-10001}"

[ "$#" -gt 0 ] || { echo "usage: $0 NAME=SCOPE[@UID]..." >&2; exit 2; }

# The server writes admin.token on its first start; wait for it rather than race it.
tries=0
until [ -s "$ADMIN_TOKEN_FILE" ]; do
  tries=$((tries + 1))
  [ "$tries" -le 60 ] || { echo "no admin token in $ADMIN_TOKEN_FILE after 60 s" >&2; exit 1; }
  sleep 1
done
GANTRY_TOKEN="$(cat "$ADMIN_TOKEN_FILE")"
export GANTRY_TOKEN GANTRY_URL

mkdir -p "$TOKENS_DIR"
for spec in "$@"; do
  name="${spec%%=*}"
  rest="${spec#*=}"
  scope="${rest%%@*}"
  uid="$TOKENS_UID"
  case "$rest" in *@*) uid="${rest#*@}" ;; esac
  if [ -z "$name" ] || [ "$name" = "$spec" ] || [ -z "$scope" ]; then
    echo "bad token spec '$spec': expected NAME=SCOPE[@UID]" >&2
    exit 2
  fi
  file="$TOKENS_DIR/$name"
  if [ -s "$file" ]; then
    echo "token $name: kept ($file exists)"
    continue
  fi
  # Token names are unique forever (a revoked name stays taken), so a token whose
  # file was lost is revoked and replaced by NAME-2, NAME-3, ...; the file keeps NAME.
  taken="$(gantry token ls | awk 'NR > 1 { print $2 }')"
  token_name="$name"
  n=1
  while printf '%s\n' "$taken" | grep -Fxq "$token_name"; do
    if [ "$n" -eq 1 ]; then
      gantry token revoke "$name" >/dev/null 2>&1 || true
      echo "token $name: its file is missing, so the old secret is lost: revoked it"
    fi
    n=$((n + 1))
    token_name="$name-$n"
  done
  umask 077
  gantry token create --name "$token_name" --scope "$scope" > "$file.tmp"
  chown "$uid" "$file.tmp"
  mv "$file.tmp" "$file"
  echo "token $token_name: created (scope $scope) in $file"
done
