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

# terroir_module PATH: the importable file of terroir module PATH (without extension, relative to the
# checkout), e.g. `terroir_module src/workload/index`: the compiled .js in dist/, or the .ts source with
# TERROIR_FROM_SOURCE=1 (then node needs TERROIR_NODE_IMPORT, set below, to load it).
terroir_module() {
  if [ "${TERROIR_FROM_SOURCE:-0}" = 1 ]; then echo "$root/$1.ts"; else echo "$root/dist/$1.js"; fi
}
# node's arguments that let it import terroir_module paths (the tsx loader for the sources, else none).
TERROIR_NODE_IMPORT=()
[ "${TERROIR_FROM_SOURCE:-0}" = 1 ] && TERROIR_NODE_IMPORT=(--import "file://$root/node_modules/tsx/dist/loader.mjs")

# unified_identity_flag: prints on or off for UNIFIED_IDENTITY_ENABLED, decided by terroir's own
# feature-flag parser (feature-flags/), so a script never disagrees with the server or agent about a
# spelling ("On", "1", "yes"...). A value that is not a boolean: the parser's message on stderr, exit 1.
unified_identity_flag() {
  TERROIR_FLAGS_MODULE=$(terroir_module feature-flags/index) node "${TERROIR_NODE_IMPORT[@]}" --input-type=module -e '
    const { loadFeatureFlags } = await import(process.env.TERROIR_FLAGS_MODULE);
    try {
      console.log(loadFeatureFlags(undefined, process.env).flags.unifiedIdentity ? "on" : "off");
    } catch (err) {
      console.error(err.message);
      process.exit(1);
    }'
}

# free_port: prints a TCP port on 127.0.0.1 that is free right now (for scripts starting local services).
# A random free port below the kernel's ephemeral range (32768+), where outgoing connections cannot take it
# between this check and the real listen (test/support/ports.ts says why).
free_port() { node -e "
const net=require('net');
const tryOne=(n)=>{ if(n===0){console.error('no free port between 20000 and 31999');process.exit(1);}
  const p=20000+Math.floor(Math.random()*12000);
  const s=net.createServer().once('error',()=>tryOne(n-1)).listen(p,'127.0.0.1',()=>{console.log(p);s.close();});};
tryOne(200);"; }

# swtpm_port_pair: prints a port P with P+1 free too (swtpm serves the TPM on P and its control
# channel on P+1); fails after 20 tries.
swtpm_port_pair() {
  local p
  for _ in $(seq 1 20); do
    p=$(free_port)
    if node -e "require('net').createServer().once('error',()=>process.exit(1)).listen($((p + 1)),'127.0.0.1',function(){this.close()})"; then
      echo "$p"
      return 0
    fi
  done
  return 1
}
