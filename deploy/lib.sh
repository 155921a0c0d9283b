# Shared by the deploy/ scripts (sourced, not run). Sets `root` (the terroir checkout or image
# directory) and runs terroir's command lines either as the compiled JavaScript in dist/ (images,
# production) or, with TERROIR_FROM_SOURCE=1, as the TypeScript sources through tsx, so tests and
# development run the very same steps without a build.
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# terroir_cmd NAME: sets the array CMD to the command line of bin NAME (terroir-server | terroir-agent),
# for `exec "${CMD[@]}" ARGS...` (exec keeps the PID, so supervisors signal node itself).
terroir_cmd() {
  if [ "${TERROIR_FROM_SOURCE:-0}" = 1 ]; then
    CMD=(node --import "file://$root/node_modules/tsx/dist/loader.mjs" "$root/src/cli/$1.ts")
  else
    CMD=(node "$root/dist/src/cli/$1.js")
  fi
}

# terroir_cli NAME ARGS...: runs bin NAME as a child.
terroir_cli() {
  terroir_cmd "$1"; shift
  "${CMD[@]}" "$@"
}
