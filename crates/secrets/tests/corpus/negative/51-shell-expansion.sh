#!/bin/sh
: "${ADMIN_TOKEN_FILE:?ADMIN_TOKEN_FILE must name a file holding an admin token}"
: "${API_SECRET_PATH:-/run/secrets/api_secret}"
