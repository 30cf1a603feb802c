# The `cell.policy` options: the allowlist, typed and mergeable. Several
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
  options.cell.policy = {
    https = mkOption {
      type = types.attrsOf httpsEntry;
      default = { };
      example = lib.literalExpression ''
        {
          "api.anthropic.com" = { };
          "*.github.com".includeApex = true;
          "registry.npmjs.org".methods = [ "GET" "HEAD" ];
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
      idleTimeoutSecs = limit 300 [ 1 86400 ] "A proxied connection with no traffic is closed after this, seconds";
      connectTimeoutMs = limit 10000 [ 100 120000 ] "Time allowed to connect upstream, milliseconds";
      certCache = limit 1024 [ 1 1048576 ] "Minted certificates kept in memory";
    };

    document = mkOption {
      type = types.attrs;
      readOnly = true;
      description = "The compiled policy document (what cell-proxy reads). Read-only.";
    };
  };

  config.cell.policy.document = (import ../lib/policy.nix).toDocument (
    builtins.removeAttrs config.cell.policy [ "document" ]
  );
}
