-- Wireshark / tshark dissector for snapsync (docs/PROTOCOL.md).
--
--   tshark -X lua_script:scripts/wireshark/snapsync.lua -r capture.pcap
--   wireshark -X lua_script:scripts/wireshark/snapsync.lua capture.pcap
--
-- Registered on UDP port 7777 (the demo's default); for another port use Decode As, or
-- tshark's `-d udp.port==PORT,snapsync`. Plain mode (the default preference) is decoded field by field: the packet
-- header and its CRC (checked), the handshake, the connected header, the payload's datagram
-- section (the replication layer's input acknowledgement and the snapshot part's header) and
-- the channel section's records. In secure mode (netcode 1.02) only the netcode header is
-- readable; the rest is ciphertext. Anything that does not parse is flagged as malformed.

local p = Proto("snapsync", "snapsync game-state sync")
-- A packet of secure mode cannot be told from a corrupt plain one without the keys, so the
-- mode is a preference (Edit > Preferences > Protocols > snapsync, or tshark's
-- `-o snapsync.secure:TRUE`).
p.prefs.secure = Pref.bool("Secure mode (netcode 1.02)", false,
  "The capture is of a secure server: decode the netcode header, the rest is ciphertext")

local KINDS = {
  [1] = "ConnectionRequest", [2] = "Challenge", [3] = "ChallengeResponse",
  [4] = "Accepted", [5] = "Denied", [6] = "Payload", [7] = "Disconnect",
}
local NETCODE_TYPES = {
  [0] = "connection request", [1] = "connection denied", [2] = "connection challenge",
  [3] = "connection response", [4] = "keep-alive", [5] = "payload", [6] = "disconnect",
}

local f = {
  mode = ProtoField.string("snapsync.mode", "Mode"),
  crc = ProtoField.uint32("snapsync.crc", "CRC-32", base.HEX),
  crc_ok = ProtoField.bool("snapsync.crc_ok", "CRC matches"),
  kind = ProtoField.uint8("snapsync.kind", "Kind", base.DEC, KINDS),
  client_nonce = ProtoField.uint64("snapsync.client_nonce", "Client nonce", base.HEX),
  timestamp = ProtoField.uint64("snapsync.timestamp_ms", "Cookie timestamp (ms)"),
  mac = ProtoField.uint64("snapsync.mac", "Cookie MAC", base.HEX),
  client_id = ProtoField.uint32("snapsync.client_id", "Client id"),
  salt = ProtoField.uint32("snapsync.salt", "Session salt", base.HEX),
  deny_reason = ProtoField.uint8("snapsync.deny_reason", "Deny reason", base.DEC,
    { [1] = "server full", [2] = "shutting down" }),
  padding = ProtoField.bytes("snapsync.padding", "Padding"),
  sequence = ProtoField.uint16("snapsync.sequence", "Sequence"),
  ack = ProtoField.uint16("snapsync.ack", "Ack"),
  ack_bits = ProtoField.uint32("snapsync.ack_bits", "Ack bits", base.HEX),
  ack_delay = ProtoField.uint16("snapsync.ack_delay", "Ack delay (50 us units)"),
  disconnect_reason = ProtoField.uint8("snapsync.disconnect_reason", "Disconnect reason",
    base.DEC, { [1] = "requested", [2] = "server shutdown", [3] = "kicked" }),
  keepalive = ProtoField.bool("snapsync.keepalive", "Keep-alive (empty payload)"),
  flags = ProtoField.uint8("snapsync.flags", "Payload flags", base.HEX),
  datagram_len = ProtoField.uint16("snapsync.datagram_length", "Datagram length"),
  input_ack = ProtoField.uint32("snapsync.input_ack", "Input acknowledged"),
  resync = ProtoField.bool("snapsync.resync", "Asks for a full snapshot"),
  first_input = ProtoField.uint32("snapsync.first_input_tick", "First input's tick"),
  input_count = ProtoField.uint32("snapsync.input_count", "Inputs carried"),
  tick = ProtoField.uint32("snapsync.tick", "Snapshot tick"),
  baseline = ProtoField.uint32("snapsync.baseline", "Baseline tick"),
  full = ProtoField.bool("snapsync.full", "Full snapshot (no baseline)"),
  part_index = ProtoField.uint16("snapsync.part_index", "Part index"),
  part_count = ProtoField.uint16("snapsync.part_count", "Part count"),
  update_count = ProtoField.uint32("snapsync.update_count", "Updated entities"),
  record_count = ProtoField.uint8("snapsync.record_count", "Channel records"),
  channel = ProtoField.uint8("snapsync.channel", "Channel"),
  record_flags = ProtoField.uint8("snapsync.record_flags", "Record flags", base.HEX),
  message_id = ProtoField.uint16("snapsync.message_id", "Message id"),
  fragment_index = ProtoField.uint16("snapsync.fragment_index", "Fragment index"),
  fragment_count = ProtoField.uint16("snapsync.fragment_count", "Fragment count"),
  message_len = ProtoField.uint16("snapsync.message_length", "Message length"),
  message = ProtoField.bytes("snapsync.message", "Message"),
  netcode_type = ProtoField.uint8("snapsync.netcode_type", "netcode packet type", base.DEC,
    NETCODE_TYPES),
  netcode_sequence = ProtoField.uint64("snapsync.netcode_sequence", "netcode sequence"),
  ciphertext = ProtoField.bytes("snapsync.ciphertext", "Encrypted (ChaCha20-Poly1305)"),
}
p.fields = {}
for _, v in pairs(f) do table.insert(p.fields, v) end

local malformed = ProtoExpert.new("snapsync.malformed", "Malformed snapsync packet",
  expert.group.MALFORMED, expert.severity.ERROR)
p.experts = { malformed }

-- CRC-32 (IEEE) over the protocol id as 8 little-endian bytes, then bytes 4.. of the packet.
local PROTOCOL_ID_LE = { 0x01, 0x4E, 0x59, 0x53, 0x50, 0x41, 0x4E, 0x53 }
-- Plain arithmetic, so the script runs on any Lua Wireshark embeds (5.1 to 5.4).
local function bxor(a, b)
  local r, w = 0, 1
  while a > 0 or b > 0 do
    if (a % 2) ~= (b % 2) then r = r + w end
    a, b, w = math.floor(a / 2), math.floor(b / 2), w * 2
  end
  return r
end
local CRC_TABLE = {}
for i = 0, 255 do
  local c = i
  for _ = 1, 8 do
    if c % 2 == 1 then
      c = bxor(math.floor(c / 2), 0xEDB88320)
    else
      c = math.floor(c / 2)
    end
  end
  CRC_TABLE[i] = c
end
local function crc_update(crc, byte)
  return bxor(CRC_TABLE[bxor(crc, byte) % 256], math.floor(crc / 256))
end
local function packet_crc(buf)
  local crc = 0xFFFFFFFF
  for _, b in ipairs(PROTOCOL_ID_LE) do crc = crc_update(crc, b) end
  for i = 4, buf:len() - 1 do crc = crc_update(crc, buf(i, 1):uint()) end
  return bxor(crc, 0xFFFFFFFF)
end

local function flag(tree, item, why)
  (item or tree):add_proto_expert_info(malformed, why)
end

-- Bits least-significant first, as the snapshot codec writes them.
local function bit_reader(range)
  local r = { range = range, pos = 0, len = range:len() * 8 }
  function r:read(n)
    if self.pos + n > self.len then return nil end
    local v, weight = 0, 1
    for _ = 1, n do
      local byte = self.range(math.floor(self.pos / 8), 1):uint()
      local b = math.floor(byte / 2 ^ (self.pos % 8)) % 2
      v = v + b * weight
      weight = weight * 2
      self.pos = self.pos + 1
    end
    return v
  end
  function r:varint(k)
    local v, shift = 0, 0
    for _ = 1, 32 do
      local group = self:read(k)
      local more = self:read(1)
      if group == nil or more == nil then return nil end
      v = v + group * 2 ^ shift
      shift = shift + k
      if more == 0 then return v end
    end
    return nil
  end
  return r
end

local function dissect_part(range, tree, prefix_code)
  local t = tree:add(p, range, "Snapshot part")
  local r = bit_reader(range)
  local tick = r:read(32)
  if tick == nil then flag(t, nil, "part truncated before its tick"); return end
  t:add(f.tick, range(0, 4), tick)
  if prefix_code ~= nil and prefix_code > 0 then
    local z = prefix_code - 1
    local d = (z % 2 == 0) and (z / 2) or -((z + 1) / 2)
    t:add(f.input_ack, range(0, 1), tick - d)
  end
  local has_base = r:read(1)
  if has_base == 1 then
    local gap = r:varint(7)
    if gap == nil then flag(t, nil, "part truncated in its baseline"); return end
    t:add(f.baseline, range(4, 1), tick - gap - 1)
  else
    t:add(f.full, range(4, 1), true)
  end
  local index, count = r:read(8), r:read(8)
  local updates = r:varint(7)
  if index == nil or count == nil or updates == nil then
    flag(t, nil, "part truncated in its header")
    return
  end
  t:add(f.part_index, range(4, 1), index)
  t:add(f.part_count, range(4, 1), count + 1)
  t:add(f.update_count, range(4, 1), updates)
  t:append_text(string.format(": tick %d, part %d of %d, %d updates (entity deltas need the quantization)",
    tick, index + 1, count + 1, updates))
end

-- bincode 2's standard varint: < 251 one byte; 251, 252, 253: a u16, u32, u64 follows (LE).
local function bincode_varint(range, off)
  if off >= range:len() then return nil end
  local b = range(off, 1):uint()
  if b < 251 then return b, off + 1 end
  local n = ({ [251] = 2, [252] = 4, [253] = 8 })[b]
  if n == nil or range:len() - off - 1 < n then return nil end
  if n == 8 then return range(off + 1, 8):le_uint64():tonumber(), off + 9 end
  return range(off + 1, n):le_uint(), off + 1 + n
end

-- A client's input packet (replication layer): resync flag, first input tick, inputs.
local function dissect_inputs(range, tree)
  local t = tree:add(p, range, "Input frame")
  if range:len() < 1 then flag(t, nil, "input frame empty"); return end
  local resync = range(0, 1):uint()
  if resync > 1 then flag(t, nil, "resync flag not a bool"); return end
  t:add(f.resync, range(0, 1), resync == 1)
  local first, off = bincode_varint(range, 1)
  if first == nil then flag(t, nil, "input frame truncated in its first tick"); return end
  t:add(f.first_input, range(1, off - 1), first)
  local count, o2 = bincode_varint(range, off)
  if count == nil then flag(t, nil, "input frame truncated in its count"); return end
  t:add(f.input_count, range(off, o2 - off), count)
  off = o2
  for i = 1, count do
    local len, o3 = bincode_varint(range, off)
    if len == nil or range:len() - o3 < len then flag(t, nil, "input " .. i .. " truncated"); return end
    off = o3 + len
  end
  if off ~= range:len() then flag(t, nil, (range:len() - off) .. " bytes after the inputs") end
  t:append_text(string.format(": %d inputs from tick %d", count, first))
end

local function dissect_channels(range, tree)
  local t = tree:add(p, range, "Channel section")
  local n = range(0, 1):uint()
  t:add(f.record_count, range(0, 1))
  if n == 0 then flag(t, nil, "record count 0"); return end
  local off = 1
  for i = 1, n do
    if range:len() - off < 6 then flag(t, nil, "record " .. i .. " truncated"); return end
    local rec_flags = range(off + 1, 1):uint()
    local frag = rec_flags % 2 == 1
    local hdr = frag and 10 or 6
    if range:len() - off < hdr then flag(t, nil, "record " .. i .. " truncated"); return end
    local len = range(off + hdr - 2, 2):le_uint()
    if range:len() - off - hdr < len then flag(t, nil, "record " .. i .. " payload truncated"); return end
    local rt = t:add(p, range(off, hdr + len), "Record " .. i)
    rt:add(f.channel, range(off, 1))
    rt:add(f.record_flags, range(off + 1, 1))
    if rec_flags >= 2 then flag(rt, nil, "reserved record flags set") end
    rt:add_le(f.message_id, range(off + 2, 2))
    if frag then
      rt:add_le(f.fragment_index, range(off + 4, 2))
      rt:add_le(f.fragment_count, range(off + 6, 2))
    end
    rt:add_le(f.message_len, range(off + hdr - 2, 2))
    if len > 0 then rt:add(f.message, range(off + hdr, len)) end
    off = off + hdr + len
  end
  if off ~= range:len() then flag(t, nil, (range:len() - off) .. " bytes after the last record") end
end

local function dissect_payload(range, tree, from_server)
  if range == nil or range:len() == 0 then
    tree:add(f.keepalive, true)
    return
  end
  local flags = range(0, 1):uint()
  tree:add(f.flags, range(0, 1))
  if flags >= 2 then flag(tree, nil, "reserved payload flags set"); return end
  local off = 1
  if flags == 1 then
    if range:len() < 3 then flag(tree, nil, "datagram length truncated"); return end
    local len = range(1, 2):le_uint()
    tree:add_le(f.datagram_len, range(1, 2))
    if range:len() - 3 < len then flag(tree, nil, "datagram truncated"); return end
    local d = range(3, len)
    if not from_server then
      if len > 0 then dissect_inputs(d, tree) end
      if range:len() > 3 + len then dissect_channels(range(3 + len), tree) end
      return
    end
    -- The replication layer's prefix: one LEB128 varint, then the part.
    local code, shift, i = 0, 0, 0
    while true do
      if i >= len then flag(tree, nil, "datagram prefix truncated"); return end
      local b = d(i, 1):uint()
      code = code + (b % 128) * 2 ^ shift
      i = i + 1
      if b < 128 then break end
      shift = shift + 7
      if shift > 35 then flag(tree, nil, "datagram prefix too long"); return end
    end
    if len - i > 0 then dissect_part(d(i, len - i), tree, code) end
    off = 3 + len
  end
  if range:len() > off then dissect_channels(range(off), tree) end
end

local function dissect_plain(buf, pinfo, tree)
  tree:add(f.mode, "plain")
  tree:add_le(f.crc, buf(0, 4))
  tree:add(f.crc_ok, true)
  local kind = buf(4, 1):uint()
  tree:add(f.kind, buf(4, 1))
  pinfo.cols.info:set("snapsync " .. (KINDS[kind] or ("kind " .. kind)))
  local len = buf:len()
  local function need(n)
    if len < n then flag(tree, nil, (KINDS[kind] or "packet") .. " truncated: " .. len .. " of " .. n .. " bytes"); return false end
    return true
  end
  if kind == 1 or kind == 3 then
    if not need(kind == 1 and 13 or 29) then return end
    tree:add_le(f.client_nonce, buf(5, 8))
    if kind == 3 then
      tree:add_le(f.timestamp, buf(13, 8))
      tree:add_le(f.mac, buf(21, 8))
    end
    if len ~= 1200 then flag(tree, nil, "handshake packet of " .. len .. " bytes (must be 1200)") end
  elseif kind == 2 then
    if not need(29) then return end
    tree:add_le(f.client_nonce, buf(5, 8))
    tree:add_le(f.timestamp, buf(13, 8))
    tree:add_le(f.mac, buf(21, 8))
  elseif kind == 4 then
    if not need(21) then return end
    tree:add_le(f.client_nonce, buf(5, 8))
    tree:add_le(f.client_id, buf(13, 4))
    tree:add_le(f.salt, buf(17, 4))
  elseif kind == 5 then
    if not need(14) then return end
    tree:add_le(f.client_nonce, buf(5, 8))
    tree:add(f.deny_reason, buf(13, 1))
  elseif kind == 6 then
    if not need(19) then return end
    tree:add_le(f.salt, buf(5, 4))
    tree:add_le(f.sequence, buf(9, 2))
    tree:add_le(f.ack, buf(11, 2))
    tree:add_le(f.ack_bits, buf(13, 4))
    tree:add_le(f.ack_delay, buf(17, 2))
    pinfo.cols.info:append(string.format(" seq=%d ack=%d", buf(9, 2):le_uint(), buf(11, 2):le_uint()))
    -- The server is the side on the port the dissector was found by.
    local from_server = pinfo.src_port == pinfo.match_uint
    dissect_payload(len > 19 and buf(19) or nil, tree, from_server)
  elseif kind == 7 then
    if not need(10) then return end
    tree:add_le(f.salt, buf(5, 4))
    tree:add(f.disconnect_reason, buf(9, 1))
  else
    flag(tree, nil, "unknown kind " .. kind)
  end
end

local function dissect_netcode(buf, pinfo, tree)
  tree:add(f.mode, "secure (netcode 1.02)")
  local prefix = buf(0, 1):uint()
  local ptype, seq_bytes = prefix % 16, math.floor(prefix / 16)
  tree:add(f.netcode_type, buf(0, 1), ptype)
  pinfo.cols.info:set("snapsync secure: netcode " .. (NETCODE_TYPES[ptype] or "?"))
  if prefix == 0 then return end -- connection request: version, protocol id, token (opaque)
  if buf:len() < 1 + seq_bytes + 16 then flag(tree, nil, "netcode packet truncated"); return end
  local seq = buf(1, seq_bytes):le_uint64()
  tree:add(f.netcode_sequence, buf(1, seq_bytes), seq)
  tree:add(f.ciphertext, buf(1 + seq_bytes))
end

function p.dissector(buf, pinfo, tree)
  pinfo.cols.protocol:set("snapsync")
  local t = tree:add(p, buf(), "snapsync")
  if buf:len() < 5 then
    flag(t, nil, "shorter than any snapsync packet (" .. buf:len() .. " bytes)")
    return
  end
  if p.prefs.secure then
    local prefix = buf(0, 1):uint()
    local ptype, seq_bytes = prefix % 16, math.floor(prefix / 16)
    if (prefix == 0 and buf:len() == 1078) or (ptype >= 1 and ptype <= 6 and seq_bytes >= 1 and seq_bytes <= 8) then
      return dissect_netcode(buf, pinfo, t)
    end
    flag(t, nil, "not a netcode packet")
    return
  end
  if packet_crc(buf) == buf(0, 4):le_uint() then
    return dissect_plain(buf, pinfo, t)
  end
  t:add_le(f.crc, buf(0, 4))
  t:add(f.crc_ok, false)
  flag(t, nil, "CRC mismatch: corrupt, truncated, or another protocol")
end

DissectorTable.get("udp.port"):add(7777, p)
