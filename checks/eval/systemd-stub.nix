# Types shared by the systemd and networkd stubs in ./nixos-stub.nix: the
# `unitOption` type and the `checkUnitConfig` checks of nixpkgs'
# nixos/lib/systemd-unit-options.nix and nixos/lib/systemd-lib.nix, and the
# section checks of nixos/modules/system/boot/networkd.nix for the sections
# cell writes. Re-stated, not copied: same behaviour for the keys cell uses.
{ lib }:
let
  inherit (lib) types;

  # systemd-lib.nix: what a boolean unit setting may be.
  boolValues = [
    true
    false
    "yes"
    "no"
  ];

  # A check returns the list of its error messages for one section.
  onlyFields = fields: group: attrs:
    let
      bad = lib.filter (name: !(lib.elem name fields)) (lib.attrNames attrs);
    in
    lib.optional (bad != [ ]) "Systemd ${group} has extra fields [${lib.concatStringsSep " " bad}].";
  oneOf = name: values: group: attrs:
    lib.optional (attrs ? ${name} && !(lib.elem attrs.${name} values))
      "Systemd ${group} field `${name}' cannot have value `${toString attrs.${name}}'.";
  macAddress = name: group: attrs:
    lib.optional (attrs ? ${name} && builtins.match "([0-9A-Fa-f]{2}:){5}[0-9A-Fa-f]{2}" attrs.${name} == null)
      "Systemd ${group} field `${name}' must be in MAC address format.";

  # checkUnitConfig: true when no check complains, else trace the errors
  # and fail the type check (as nixpkgs does).
  checkUnitConfig = group: checks: attrs:
    let
      errors = lib.concatMap (c: c group attrs) checks;
    in
    if errors == [ ] then true else builtins.trace (lib.concatStringsSep "\n" errors) false;

  # The operational states networkctl knows, and min:max ranges of them.
  operationalStates = [
    "missing"
    "off"
    "no-carrier"
    "dormant"
    "degraded-carrier"
    "carrier"
    "degraded"
    "enslaved"
    "routable"
  ];
  operationalRanges = lib.concatLists (
    lib.imap0 (i: min: map (max: "${min}:${max}") (lib.drop i operationalStates)) operationalStates
  );
in
rec {
  # systemd-unit-options.nix: if any definition is a list, all are
  # concatenated (single values as one-element lists); else they must agree.
  unitOption = lib.mkOptionType {
    name = "systemd option";
    merge = loc: defs:
      let
        defs' = lib.filterOverrides defs;
      in
      if lib.any (def: lib.isList def.value) defs' then
        lib.concatMap (def: lib.toList def.value) defs'
      else
        lib.mergeEqualOption loc defs';
  };
  section = check: types.addCheck (types.attrsOf unitOption) check;

  # systemd-lib.nix: unitNameType.
  unitName = types.strMatching "[a-zA-Z0-9@%:_.\\-]+[.](service|socket|device|mount|automount|swap|target|path|timer|scope|slice)";

  # systemd-unit-options.nix: checkService.
  checkService = checkUnitConfig "Service" [
    (oneOf "Type" [
      "exec"
      "simple"
      "forking"
      "oneshot"
      "dbus"
      "notify"
      "notify-reload"
      "idle"
    ])
    (oneOf "Restart" [
      "no"
      "on-success"
      "on-failure"
      "on-abnormal"
      "on-abort"
      "always"
    ])
  ];

  # networkd.nix check.link.sectionLink (the [Link] section of .link files):
  # every key the current declaration allows.
  checkLinkLink = checkUnitConfig "Link" [
    (onlyFields [
      "Description"
      "Property"
      "ImportProperty"
      "UnsetProperty"
      "Alias"
      "MACAddressPolicy"
      "MACAddress"
      "NamePolicy"
      "Name"
      "AlternativeNamesPolicy"
      "AlternativeName"
      "TransmitQueues"
      "ReceiveQueues"
      "TransmitQueueLength"
      "MTUBytes"
      "BitsPerSecond"
      "Duplex"
      "AutoNegotiation"
      "WakeOnLan"
      "WakeOnLanPassword"
      "Port"
      "Advertise"
      "ReceiveChecksumOffload"
      "TransmitChecksumOffload"
      "TCPSegmentationOffload"
      "TCP6SegmentationOffload"
      "GenericSegmentationOffload"
      "PartialGenericSegmentationOffload"
      "GenericReceiveOffload"
      "GenericReceiveOffloadHardware"
      "LargeReceiveOffload"
      "RxChannels"
      "TxChannels"
      "OtherChannels"
      "CombinedChannels"
      "RxBufferSize"
      "TxBufferSize"
      "ReceivePacketSteeringCPUMask"
      "ReceiveVLANCTAGHardwareAcceleration"
      "TransmitVLANCTAGHardwareAcceleration"
      "ReceiveVLANCTAGFilter"
      "TransmitVLANSTAGHardwareAcceleration"
      "NTupleFilter"
      "ReceiveFCS"
      "ReceiveAll"
      "RxMiniBufferSize"
      "RxJumboBufferSize"
      "RxFlowControl"
      "TxFlowControl"
      "AutoNegotiationFlowControl"
      "GenericSegmentOffloadMaxBytes"
      "GenericSegmentOffloadMaxSegments"
      "UseAdaptiveRxCoalesce"
      "UseAdaptiveTxCoalesce"
      "RxCoalesceSec"
      "RxCoalesceIrqSec"
      "RxCoalesceLowSec"
      "RxCoalesceHighSec"
      "TxCoalesceSec"
      "TxCoalesceIrqSec"
      "TxCoalesceLowSec"
      "TxCoalesceHighSec"
      "RxMaxCoalescedFrames"
      "RxMaxCoalescedIrqFrames"
      "RxMaxCoalescedLowFrames"
      "RxMaxCoalescedHighFrames"
      "TxMaxCoalescedFrames"
      "TxMaxCoalescedIrqFrames"
      "TxMaxCoalescedLowFrames"
      "TxMaxCoalescedHighFrames"
      "CoalescePacketRateLow"
      "CoalescePacketRateHigh"
      "CoalescePacketRateSampleIntervalSec"
      "StatisticsBlockCoalesceSec"
      "MDI"
      "SR-IOVVirtualFunctions"
      "ScatterGather"
      "ScatterGatherFragmentList"
      "TCPECNSegmentationOffload"
      "TCPMangleIdSegmentationOffload"
      "GenericReceiveOffloadList"
      "GenericReceiveOffloadUDPForwarding"
    ])
    (oneOf "MACAddressPolicy" [
      "persistent"
      "random"
      "none"
    ])
    (macAddress "MACAddress")
  ];

  # networkd.nix check.network.sectionLink (the [Link] section of .network files).
  checkNetworkLink = checkUnitConfig "Link" [
    (onlyFields [
      "MACAddress"
      "MTUBytes"
      "ARP"
      "Multicast"
      "AllMulticast"
      "Promiscuous"
      "Unmanaged"
      "Group"
      "RequiredForOnline"
      "RequiredFamilyForOnline"
      "ActivationPolicy"
    ])
    (macAddress "MACAddress")
    (oneOf "ARP" boolValues)
    (oneOf "Unmanaged" boolValues)
    (oneOf "RequiredForOnline" (boolValues ++ operationalStates ++ operationalRanges))
    (oneOf "RequiredFamilyForOnline" [
      "ipv4"
      "ipv6"
      "both"
      "any"
    ])
  ];

  # networkd.nix check.network.sectionNetwork: every key it allows, and the
  # values of the keys cell sets.
  checkNetworkNetwork = checkUnitConfig "Network" [
    (onlyFields [
      "Description"
      "DHCP"
      "DHCPServer"
      "LinkLocalAddressing"
      "IPv6LinkLocalAddressGenerationMode"
      "IPv6StableSecretAddress"
      "IPv4LLStartAddress"
      "IPv4LLRoute"
      "DefaultRouteOnDevice"
      "LLMNR"
      "MulticastDNS"
      "DNSOverTLS"
      "DNSSEC"
      "DNSSECNegativeTrustAnchors"
      "LLDP"
      "EmitLLDP"
      "BindCarrier"
      "Address"
      "Gateway"
      "DNS"
      "UseDomains"
      "Domains"
      "DNSDefaultRoute"
      "NTP"
      "IPForward"
      "IPv4Forwarding"
      "IPv6Forwarding"
      "IPMasquerade"
      "IPv6PrivacyExtensions"
      "IPv6AcceptRA"
      "IPv6DuplicateAddressDetection"
      "IPv6HopLimit"
      "IPv6RetransmissionTimeSec"
      "IPv4DuplicateAddressDetectionTimeoutSec"
      "IPv4ReversePathFilter"
      "MulticastIGMPVersion"
      "IPv4AcceptLocal"
      "IPv4RouteLocalnet"
      "IPv4ProxyARP"
      "IPv4ProxyARPPrivateVLAN"
      "IPv6ProxyNDP"
      "IPv6ProxyNDPAddress"
      "IPv6SendRA"
      "DHCPPrefixDelegation"
      "IPv6MTUBytes"
      "MPLSRouting"
      "KeepMaster"
      "BatmanAdvanced"
      "Bridge"
      "Bond"
      "VRF"
      "IPoIB"
      "IPVLAN"
      "IPVTAP"
      "MACsec"
      "MACVLAN"
      "MACVTAP"
      "Tunnel"
      "VLAN"
      "VXLAN"
      "Xfrm"
      "ActiveSlave"
      "PrimarySlave"
      "ConfigureWithoutCarrier"
      "IgnoreCarrierLoss"
      "KeepConfiguration"
    ])
    (oneOf "DHCP" (boolValues ++ [ "ipv4" "ipv6" ]))
    (oneOf "LinkLocalAddressing" (boolValues ++ [ "ipv4" "ipv6" ]))
    (oneOf "IPv6AcceptRA" boolValues)
    (oneOf "ConfigureWithoutCarrier" boolValues)
  ];
}
