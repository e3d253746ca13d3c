// The configuration Portcullis runs with when no file is given. Kept as a TypeScript string (not a .yaml file
// next to this one) because tsc does not copy non-TS files into dist/. `portcullis` prints it for `config default`
// style commands, and test/unit/config.test.ts checks that it parses.
export const DEFAULT_CONFIG_SOURCE = '<embedded default config>';

export const DEFAULT_CONFIG_YAML = `# Portcullis configuration. Reference: docs/config.md
# Every key is checked: an unknown key is an error, so a typo cannot silently weaken a rule.

listen: 127.0.0.1:5050

# stateDir: /var/lib/portcullis
#   default: $STATE_DIRECTORY (set by systemd's StateDirectory=), else $XDG_STATE_HOME/portcullis,
#   else ~/.local/state/portcullis

upstreams:
  # Docker Hub. No notary block on purpose: Docker is shutting down notary.docker.io on 2026-12-08, so
  # Portcullis ships no Notary default for it. Add a notary block for a registry whose Notary server you run.
  docker.io:
    url: https://registry-1.docker.io
    # Docker Hub hands out tokens from auth.docker.io and redirects blob downloads to its CDN. These are the
    # only other hosts the daemon may contact for docker.io; a redirect anywhere else is refused.
    allowedHosts: [auth.docker.io, production.cloudflare.docker.com]

policy:
  # Deny by default: with no trust source configured, nothing unsigned (and so nothing at all) is served.
  # Add more specific rules above this one, e.g.
  #   - match: "registry.example.com/team/**"
  #     trust: notary
  #     signers: [targets/releases]
  - match: "**"
    trust: deny

offline:
  maxStaleness: 0s    # never serve past the expiry of trusted metadata (the only value accepted today)

logging:
  level: info
`;
