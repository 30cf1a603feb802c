# The shared `cell.*` namespace both VMs read: `cell.policy` (the allowlist),
# `cell.secrets` (declared by name, scope and source; never a value) and
# `cell.link` (the private link's addresses).
#
# `cell.policy` is typed and mergeable. Several
# modules can add entries; `https` and `tcp` are keyed by host, so two
# modules naming the same host merge into one entry. The compiled document
# is `config.cell.policy.document` (lib/policy.nix); cell-proxy --check
# validates it again at build time. Field meanings: docs/policy.md.
{ lib, config, ... }:
let
  inherit (lib) mkOption types;

  hostPattern = types.strMatching "[*]|([*][.])?[^*/:@ ]+" // {
    description = "host name or wildcard, e.g. \"api.example.com\" or \"*.example.com\"";
  };
  port = types.ints.between 1 65535;
  method = types.strMatching "[A-Za-z0-9!#$%&'*+.^_`|~-]+" // {
    description = "HTTP method, e.g. \"GET\"";
  };
  pathPattern = types.strMatching "/[^?# ]*" // {
    description = "path pattern starting with /, e.g. \"/v1/**\"";
  };
  ipv4Cidr = types.strMatching "[0-9]{1,3}([.][0-9]{1,3}){3}/[0-9]{1,2}" // {
    description = "IPv4 network in CIDR notation, e.g. \"192.0.2.0/24\"";
  };
  resolver = types.strMatching "[0-9a-fA-F.:]+|[[][0-9a-fA-F:]+[]]:[0-9]+" // {
    description = "resolver address, e.g. \"192.0.2.53\" or \"192.0.2.53:53\"";
  };

  ipv4 = types.strMatching "[0-9]{1,3}([.][0-9]{1,3}){3}" // {
    description = "IPv4 address, e.g. \"10.89.0.1\"";
  };
  mac = types.strMatching "[0-9a-f]{2}(:[0-9a-f]{2}){5}" // {
    description = "MAC address in lower case, e.g. \"02:ce:11:00:00:01\"";
  };

  secretEntry = types.submodule {
    options = {
      env = mkOption {
        type = types.nullOr (types.strMatching "[A-Za-z_][A-Za-z0-9_]*");
        default = null;
        example = "ANTHROPIC_API_KEY";
        description = ''
          Environment variable the agent VM gets, holding the placeholder
          `cell-placeholder-<name>` (never the value). `null` sets none.
          Must stay `null` for `kind = "aws"`, whose variables are fixed.
        '';
      };
      hosts = mkOption {
        type = types.nonEmptyListOf hostPattern;
        example = [ "api.anthropic.com" ];
        description = "The only hosts the value may be sent to. A placeholder or value headed anywhere else is blocked.";
      };
      kind = mkOption {
        type = types.enum [
          "token"
          "aws"
        ];
        default = "token";
        example = "aws";
        description = ''
          `"token"`: the firewall replaces the placeholder by the value,
          where `locations` allows, in requests to `hosts`.

          `"aws"`: IAM credentials for SigV4. The agent VM gets
          `AWS_ACCESS_KEY_ID=cell-placeholder-<name>.akid` and
          `AWS_SECRET_ACCESS_KEY=cell-placeholder-<name>` (so `env` must be
          `null`), and its SDKs and CLI sign as usual. For a request to
          `hosts` signed with that key id, the firewall checks the signature
          with the placeholder (a request it cannot verify is refused) and
          signs the request again with the real credentials. The value is the
          `credential_process` JSON (`AccessKeyId`, `SecretAccessKey`,
          optional `SessionToken`), e.g. from
          `source.command = [ "aws" "configure" "export-credentials" "--profile" "dev" "--format" "process" ]`.
          One aws secret per cell; `locations` does not apply.
        '';
      };
      locations = mkOption {
        type = types.nonEmptyListOf (
          types.enum [
            "header"
            "query"
            "body"
          ]
        );
        default = [ "header" ];
        example = [
          "header"
          "body"
        ];
        description = ''
          Where in a request to `hosts` the placeholder of a `"token"`
          secret is replaced by the value:

          - `"header"`: any request header, also inside `Basic` credentials.
          - `"query"`: the request target, path and query; the value is put in
            percent-encoded. Without it, a placeholder there is refused (403).
          - `"body"`: the request body, replaced while it streams (never
            buffered whole); its length is then not announced in advance
            (`Content-Length` is dropped, HTTP/1.1 upstreams get it chunked).
            Without it, a placeholder in the body is left as it is.

          Must stay `[ "header" ]` for `kind = "aws"`.
        '';
      };
      source = {
        keychain = mkOption {
          type = types.nullOr types.str;
          default = null;
          description = "macOS Keychain service name (`security find-generic-password -s NAME -w`).";
        };
        command = mkOption {
          type = types.nullOr (types.nonEmptyListOf types.str);
          default = null;
          example = [
            "pass"
            "show"
            "anthropic"
          ];
          description = "A command on the host that prints the value (Secret Service, pass, 1Password CLI …).";
        };
        env = mkOption {
          type = types.nullOr types.str;
          default = null;
          description = "An environment variable of the host CLI's process.";
        };
        file = mkOption {
          # A string, not a path: a path literal would be copied into the
          # world-readable store. lib/secrets.nix refuses store paths.
          type = types.nullOr types.str;
          default = null;
          example = "/run/user/1000/anthropic-key";
          description = "An absolute path on the host, as a string, outside the Nix store.";
        };
      };
    };
  };

  hostOptions = {
    host = mkOption {
      type = types.nullOr hostPattern;
      default = null;
      description = "The host pattern; defaults to the attribute name.";
    };
    includeApex = mkOption {
      type = types.bool;
      default = false;
      description = "With a wildcard `*.example.com`, also allow `example.com` itself.";
    };
    allowAnyHost = mkOption {
      type = types.bool;
      default = false;
      description = "Required to write `*` (every host) or a top-level wildcard such as `*.com`.";
    };
    comment = mkOption {
      type = types.nullOr types.str;
      default = null;
      description = "Shown next to the entry by `cell policy`.";
    };
    privateUpstream = mkOption {
      type = types.bool;
      default = false;
      description = "Let this host resolve to a private or shared address (RFC 1918, RFC 6598, ULA): a service on a corporate network. Loopback, link-local (cloud metadata), the firewall's own addresses and the agent link are refused whatever this says.";
    };
  };

  httpsEntry = types.submodule {
    options = hostOptions // {
      ports = mkOption {
        type = types.nullOr (types.nonEmptyListOf port);
        default = null;
        description = "TCP ports; `null` means `[ 443 ]`.";
      };
      methods = mkOption {
        type = types.nullOr (types.nonEmptyListOf method);
        default = null;
        example = [
          "GET"
          "HEAD"
        ];
        description = "Allowed HTTP methods; `null` allows every method.";
      };
      paths = mkOption {
        type = types.nullOr (types.nonEmptyListOf pathPattern);
        default = null;
        example = [ "/v1/**" ];
        description = "Allowed request paths (`*` within a segment, `**` across); `null` allows every path.";
      };
      passthrough = mkOption {
        type = types.bool;
        default = false;
        description = "Check the TLS server name only and relay the bytes untouched (for certificate-pinning clients). No method or path rules then.";
      };
      spy = mkOption {
        type = types.nullOr types.bool;
        default = null;
        description = ''
          Record this host's exchanges for `cell spy` when the firewall keeps a
          spy store (`cell.firewall.spy.enable`): what the agent sent and
          received, secret values replaced by their placeholders, header
          values only for a safe list, bodies capped. Kept on the firewall
          only. Not with `passthrough` (nothing is decrypted). `null` (the
          default): recorded if the host is a known model provider's API
          (api.anthropic.com, api.openai.com, *.openai.azure.com,
          bedrock-runtime.*.amazonaws.com, generativelanguage.googleapis.com,
          api.mistral.ai, api.groq.com, api.deepseek.com, openrouter.ai,
          api.x.ai); `false` never records it.
        '';
      };
    };
  };

  tcpEntry = types.submodule {
    options = hostOptions // {
      ports = mkOption {
        type = types.nonEmptyListOf port;
        example = [ 22 ];
        description = "TCP ports.";
      };
    };
  };

  cidrEntry = types.submodule {
    options = {
      cidr = mkOption {
        type = ipv4Cidr;
        description = "The range routed without the proxy.";
      };
      protocol = mkOption {
        type = types.enum [
          "tcp"
          "udp"
        ];
        description = "Transport protocol.";
      };
      ports = mkOption {
        type = types.nonEmptyListOf port;
        description = "Destination ports.";
      };
      comment = mkOption {
        type = types.nullOr types.str;
        default = null;
        description = "Shown next to the entry by `cell policy`.";
      };
    };
  };

  # cell-proxy's default is named in each description; null leaves it to the daemon.
  limit =
    default: range: description:
    mkOption {
      type = types.nullOr (types.ints.between (builtins.elemAt range 0) (builtins.elemAt range 1));
      default = null;
      description = "${description} (cell-proxy's default: ${toString default}).";
    };
in
{
  # Every role's options are declared in every VM, so one file of `cell.*`
  # settings (a project's cell.nix) can be given to both; each VM acts only
  # on its own (`cell.firewall.enable` / `cell.agent.enable`).
  imports = [
    ./firewall/options.nix
    ./agent/options.nix
  ];

  options.cell.policy = {
    https = mkOption {
      type = types.attrsOf httpsEntry;
      default = { };
      example = lib.literalExpression ''
        {
          "api.anthropic.com" = { };
          "*.github.com".includeApex = true;
          "proxy.golang.org".methods = [ "GET" "HEAD" ];
        }
      '';
      description = "Hosts reachable over HTTPS through the intercepting proxy, keyed by host pattern. One entry makes a host resolvable and reachable.";
    };

    tcp = mkOption {
      type = types.attrsOf tcpEntry;
      default = { };
      example = lib.literalExpression ''{ "github.com".ports = [ 22 ]; }'';
      description = "Hosts reachable over plain TCP (SSH, databases), spliced after the allow decision.";
    };

    cidr = mkOption {
      type = types.listOf cidrEntry;
      default = [ ];
      description = "IPv4 ranges routed without the proxy, by protocol and port.";
    };

    deny = mkOption {
      type = types.listOf hostPattern;
      default = [ ];
      example = [ "gist.github.com" ];
      description = "Host patterns denied even when another entry allows them.";
    };

    dns = {
      syntheticPool = mkOption {
        type = types.nullOr ipv4Cidr;
        default = null;
        description = "Private IPv4 range synthetic addresses come from (cell-proxy's default: 198.18.0.0/16).";
      };
      ttl = mkOption {
        type = types.nullOr (types.ints.between 0 86400);
        default = null;
        description = "TTL of synthetic answers, seconds (cell-proxy's default: 60).";
      };
      upstream = mkOption {
        type = types.listOf resolver;
        default = [ ];
        description = "Resolvers for forward names and the proxy's own lookups; empty uses the firewall's resolv.conf.";
      };
      forward = mkOption {
        type = types.listOf hostPattern;
        default = [ ];
        description = "Names answered with their real addresses (forwarded upstream, A only). Connections to them still need a `cidr` entry.";
      };
    };

    limits = {
      dnsNames = limit 65536 [ 16 16777216 ] "Names held in the synthetic table";
      dnsConcurrency = limit 256 [ 1 65536 ] "DNS queries answered at once";
      dnsTcpIdleSecs = limit 10 [ 1 3600 ] "Idle timeout of a DNS-over-TCP connection, seconds";
      dnsUpstreamTimeoutMs = limit 2000 [ 50 60000 ] "Timeout of one forwarded query, milliseconds";
      proxyConnections = limit 4096 [ 1 1000000 ] "Proxied connections open at once";
      headerBytes = limit 65536 [ 1024 1048576 ] "Largest request head, bytes";
      handshakeTimeoutMs = limit 10000 [ 100 120000 ] "Time allowed for the client's TLS hello and handshake, milliseconds";
      requestHeadTimeoutMs = limit 10000 [ 100 120000 ] "Time allowed for a request head (explicit port: from accept; intercepted: after the TLS handshake), milliseconds";
      idleTimeoutSecs = limit 300 [ 1 86400 ] "A proxied connection with no traffic is closed after this, seconds";
      connectTimeoutMs = limit 10000 [ 100 120000 ] "Time allowed to connect upstream, milliseconds";
      certCache = limit 1024 [ 1 1048576 ] "Minted certificates kept in memory";
      wildcardNamesPerMinute = limit 60 [ 1 100000 ] "New distinct names under one wildcard entry looked up upstream per minute";
    };

    document = mkOption {
      type = types.attrs;
      readOnly = true;
      description = "The compiled policy document (what cell-proxy reads). Read-only.";
    };
  };

  options.cell.secrets = mkOption {
    type = types.attrsOf secretEntry;
    default = { };
    example = lib.literalExpression ''
      {
        anthropic = {
          env = "ANTHROPIC_API_KEY";
          hosts = [ "api.anthropic.com" ];
          source.keychain = "anthropic-api-key";
        };
        bedrock = {
          kind = "aws";
          hosts = [ "bedrock-runtime.us-east-1.amazonaws.com" ];
          source.command = [ "aws" "configure" "export-credentials" "--profile" "dev" "--format" "process" ];
        };
      }
    '';
    description = ''
      Provider secrets, declared by name, scope and source, never by value.
      The agent VM sees only `cell-placeholder-<name>` in `env` (for an aws
      secret, in AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY); the firewall
      puts the real value in its place, only in requests to `hosts`. The
      host CLI reads the source at session start and pushes the value to the
      firewall daemon's memory; it is never written to either VM's disk or
      the Nix store. Two secrets may not set the same variable.
    '';
  };

  options.cell.secretsDocument = mkOption {
    type = types.attrs;
    readOnly = true;
    description = "The compiled secrets document (names, kinds, scopes, locations, sources, placeholders; no values), read by `cell-proxy --secrets`. Read-only.";
  };

  # The private link between the two VMs. Both VMs read the same values, so
  # they are shared options rather than per-VM ones.
  options.cell.link = {
    firewallAddress = mkOption {
      type = ipv4;
      default = "10.89.0.1";
      description = "The firewall VM's IPv4 address on the private link: the agent's gateway, DNS server and proxy.";
    };
    agentAddress = mkOption {
      type = ipv4;
      default = "10.89.0.2";
      description = "The agent VM's IPv4 address on the private link.";
    };
    prefixLength = mkOption {
      type = types.ints.between 8 30;
      default = 24;
      description = "IPv4 prefix length of the private link.";
    };
    firewallAddress6 = mkOption {
      type = types.strMatching "[0-9a-fA-F:]+";
      default = "fd89::1";
      description = "The firewall VM's IPv6 address on the link (IPv6 gets the same rules, never a bypass).";
    };
    agentAddress6 = mkOption {
      type = types.strMatching "[0-9a-fA-F:]+";
      default = "fd89::2";
      description = "The agent VM's IPv6 address on the link.";
    };
    proxyPort = mkOption {
      type = types.port;
      default = 3128;
      description = "The firewall's explicit HTTP CONNECT proxy port (`cell-proxy --explicit-port`), for clients that honour HTTPS_PROXY; it also serves the cell CA certificate at `/cell/ca.crt`.";
    };
    firewallMac = mkOption {
      type = mac;
      default = "02:ce:11:00:00:01";
      description = "MAC address of the firewall VM's link interface (the guest names it by this).";
    };
    agentMac = mkOption {
      type = mac;
      default = "02:ce:11:00:00:02";
      description = "MAC address of the agent VM's only interface.";
    };
  };

  config.cell.policy.document = (import ../lib/policy.nix).toDocument (
    builtins.removeAttrs config.cell.policy [ "document" ]
  );
  config.cell.secretsDocument = (import ../lib/secrets.nix).toDocument config.cell.secrets;
}
