-- Wireshark / tshark dissector for snapsync (docs/PROTOCOL.md).
--
--   tshark -X lua_script:scripts/wireshark/snapsync.lua -r capture.pcap
--   wireshark -X lua_script:scripts/wireshark/snapsync.lua capture.pcap
--
-- Registered on UDP port 7777 (the demo's default); for another port use Decode As, or
-- tshark's `-d udp.port==PORT,snapsync`. Plain mode (the default preference) is decoded field by field: the packet
-- header and its CRC (checked), the handshake, the connected header, the payload's datagram
-- section (the replication layer's input acknowledgement and the whole snapshot part) and
-- the channel section's records. In secure mode (netcode 1.02) only the netcode header is
-- readable; the rest is ciphertext. Anything that does not parse is flagged as malformed.
--
-- Snapshot parts (section 6, replication version 2) are read to their last bit, as
-- engine/src/snapshot/part.rs decode_body reads them: updates, despawns, spawns, padding.
-- A capture holds no baselines, so an update shows the deltas as they travel (steps against
-- the baseline entity, or its velocity prediction when `predicted`); a spawn is coded against
-- the all-zero entity, so it shows absolute values, in steps and in metres (m/s). A part that
-- breaks the format (truncated, an Exp-Golomb prefix past 32 bits, a count above the bits
-- left, an id past 32 bits, 8 or more bits after the last entity, ...) gets the expert error
-- "snapshot part malformed: <where>: <why>" and is decoded no further. Only rules the
-- capture can check are checked: an index beyond the baseline's length, for one, is not.
--
-- Preferences (Edit > Preferences > Protocols > snapsync, or tshark's `-o snapsync.NAME:V`);
-- the quantization defaults are QuantizeConfig::default():
--   secure               FALSE     the capture is of a secure (netcode) server
--   rotation_bits        9         bits per smallest-three component: needed to read
--                                  rotations, so a wrong value breaks the part after them
--   position_min         -512,-512,-512   box corner in metres (x,y,z, or one value)
--   position_resolution  0.001953125      position step in metres (1/512)
--   max_speed            32               largest speed per axis in m/s
--   velocity_resolution  0.03125          velocity step in m/s (1/32)
-- The last four only convert spawned values to metres and m/s (the spawn's velocity
-- reference is mid-range, max_speed / velocity_resolution steps).
--
-- Fields of a snapshot part's entity sections (all under snapsync.snap.):
--   update.index_k, update.index        order of the index gaps; each baseline index
--   despawn_count, despawn.index_k, despawn.index
--   spawn_count, spawn.id_k, spawn.id
--   code.fields, code.common (two), code.toggles, code.velocity_k_{x,y,z},
--   code.predicted, code.position_k_{x,y,z}, code.rotation_k     one entity code a section
--   entity.changed                      the entity's set of changed fields (bit 0 position,
--                                       1 rotation, 2 velocity, 3 component)
--   entity.vel_present                  presence bit (sections with code.toggles)
--   entity.dvel_{x,y,z}                 update: velocity delta in steps
--   entity.vel_{x,y,z}, entity.vel_{x,y,z}_mps       spawn: velocity in steps and m/s
--   entity.dpos_{x,y,z}                 update: position delta in steps
--   entity.pos_{x,y,z}, entity.pos_{x,y,z}_m         spawn: position in steps and metres
--   entity.rot_same, entity.rot_largest rotation: same largest component; its index
--   entity.drot_{0,1,2}                 update, same largest: smallest-three deltas
--   entity.rot_{0,1,2}                  smallest three, absolute (a new largest, or a spawn)
--   entity.comp_present, entity.comp_len, entity.comp   component
--   padding                             bits after the last entity (0..7)
-- The older fields (snapsync.tick, snapsync.baseline, snapsync.update_count, ...) keep their
-- names: scripts and demo-server/tests/dissector.rs read them.

local p = Proto("snapsync", "snapsync game-state sync")
-- A packet of secure mode cannot be told from a corrupt plain one without the keys, so the
-- mode is a preference (Edit > Preferences > Protocols > snapsync, or tshark's
-- `-o snapsync.secure:TRUE`).
p.prefs.secure = Pref.bool("Secure mode (netcode 1.02)", false,
  "The capture is of a secure server: decode the netcode header, the rest is ciphertext")
-- What only the quantization config says, needed to read rotations (rotation_bits) and to
-- show spawned values in metres. Defaults are QuantizeConfig::default(); the demo's cubes
-- and massive scenes use other boxes (demo-server/src/game.rs).
p.prefs.rotation_bits = Pref.uint("Rotation bits", 9,
  "Bits per smallest-three rotation component (QuantizeConfig::rotation_bits, 2..15)")
p.prefs.position_min = Pref.string("Position box minimum (m)", "-512,-512,-512",
  "Lower corner of the playable box, x,y,z (QuantizeConfig::position_min)")
p.prefs.position_resolution = Pref.string("Position step (m)", "0.001953125",
  "QuantizeConfig::position_resolution_m (default 1/512)")
p.prefs.max_speed = Pref.string("Largest speed (m/s)", "32", "QuantizeConfig::max_speed_mps")
p.prefs.velocity_resolution = Pref.string("Velocity step (m/s)", "0.03125",
  "QuantizeConfig::velocity_resolution_mps (default 1/32)")

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
  -- Snapshot part entity sections (docs/PROTOCOL.md section 6).
  update_index_k = ProtoField.uint8("snapsync.snap.update.index_k", "Index order k"),
  update_index = ProtoField.uint32("snapsync.snap.update.index", "Baseline index"),
  despawn_count = ProtoField.uint32("snapsync.snap.despawn_count", "Despawned entities"),
  despawn_index_k = ProtoField.uint8("snapsync.snap.despawn.index_k", "Index order k"),
  despawn_index = ProtoField.uint32("snapsync.snap.despawn.index", "Baseline index"),
  spawn_count = ProtoField.uint32("snapsync.snap.spawn_count", "Spawned entities"),
  spawn_id_k = ProtoField.uint8("snapsync.snap.spawn.id_k", "Id order k"),
  spawn_id = ProtoField.uint32("snapsync.snap.spawn.id", "Entity id"),
  code_fields = ProtoField.uint8("snapsync.snap.code.fields", "Fields changing in the section", base.HEX),
  code_common = ProtoField.uint8("snapsync.snap.code.common", "Common set of changed fields", base.HEX),
  code_toggles = ProtoField.bool("snapsync.snap.code.toggles", "Velocities appear or vanish (presence bits)"),
  code_velocity_k_x = ProtoField.uint8("snapsync.snap.code.velocity_k_x", "Velocity order k (x)"),
  code_velocity_k_y = ProtoField.uint8("snapsync.snap.code.velocity_k_y", "Velocity order k (y)"),
  code_velocity_k_z = ProtoField.uint8("snapsync.snap.code.velocity_k_z", "Velocity order k (z)"),
  code_predicted = ProtoField.bool("snapsync.snap.code.predicted", "Positions against the velocity prediction"),
  code_position_k_x = ProtoField.uint8("snapsync.snap.code.position_k_x", "Position order k (x)"),
  code_position_k_y = ProtoField.uint8("snapsync.snap.code.position_k_y", "Position order k (y)"),
  code_position_k_z = ProtoField.uint8("snapsync.snap.code.position_k_z", "Position order k (z)"),
  code_rotation_k = ProtoField.uint8("snapsync.snap.code.rotation_k", "Rotation order k"),
  ent_changed = ProtoField.uint8("snapsync.snap.entity.changed", "Changed fields", base.HEX),
  ent_vel_present = ProtoField.bool("snapsync.snap.entity.vel_present", "Velocity present"),
  ent_dvel_x = ProtoField.int32("snapsync.snap.entity.dvel_x", "Velocity delta x (steps)"),
  ent_dvel_y = ProtoField.int32("snapsync.snap.entity.dvel_y", "Velocity delta y (steps)"),
  ent_dvel_z = ProtoField.int32("snapsync.snap.entity.dvel_z", "Velocity delta z (steps)"),
  ent_vel_x = ProtoField.uint32("snapsync.snap.entity.vel_x", "Velocity x (steps)"),
  ent_vel_y = ProtoField.uint32("snapsync.snap.entity.vel_y", "Velocity y (steps)"),
  ent_vel_z = ProtoField.uint32("snapsync.snap.entity.vel_z", "Velocity z (steps)"),
  ent_vel_x_mps = ProtoField.double("snapsync.snap.entity.vel_x_mps", "Velocity x (m/s)"),
  ent_vel_y_mps = ProtoField.double("snapsync.snap.entity.vel_y_mps", "Velocity y (m/s)"),
  ent_vel_z_mps = ProtoField.double("snapsync.snap.entity.vel_z_mps", "Velocity z (m/s)"),
  ent_dpos_x = ProtoField.int32("snapsync.snap.entity.dpos_x", "Position delta x (steps)"),
  ent_dpos_y = ProtoField.int32("snapsync.snap.entity.dpos_y", "Position delta y (steps)"),
  ent_dpos_z = ProtoField.int32("snapsync.snap.entity.dpos_z", "Position delta z (steps)"),
  ent_pos_x = ProtoField.uint32("snapsync.snap.entity.pos_x", "Position x (steps)"),
  ent_pos_y = ProtoField.uint32("snapsync.snap.entity.pos_y", "Position y (steps)"),
  ent_pos_z = ProtoField.uint32("snapsync.snap.entity.pos_z", "Position z (steps)"),
  ent_pos_x_m = ProtoField.double("snapsync.snap.entity.pos_x_m", "Position x (m)"),
  ent_pos_y_m = ProtoField.double("snapsync.snap.entity.pos_y_m", "Position y (m)"),
  ent_pos_z_m = ProtoField.double("snapsync.snap.entity.pos_z_m", "Position z (m)"),
  ent_rot_same = ProtoField.bool("snapsync.snap.entity.rot_same", "Same largest component"),
  ent_rot_largest = ProtoField.uint8("snapsync.snap.entity.rot_largest", "Largest component"),
  ent_rot_0 = ProtoField.uint16("snapsync.snap.entity.rot_0", "Rotation smallest-three [0]"),
  ent_rot_1 = ProtoField.uint16("snapsync.snap.entity.rot_1", "Rotation smallest-three [1]"),
  ent_rot_2 = ProtoField.uint16("snapsync.snap.entity.rot_2", "Rotation smallest-three [2]"),
  ent_drot_0 = ProtoField.int32("snapsync.snap.entity.drot_0", "Rotation delta [0]"),
  ent_drot_1 = ProtoField.int32("snapsync.snap.entity.drot_1", "Rotation delta [1]"),
  ent_drot_2 = ProtoField.int32("snapsync.snap.entity.drot_2", "Rotation delta [2]"),
  ent_comp_present = ProtoField.bool("snapsync.snap.entity.comp_present", "Component present"),
  ent_comp_len = ProtoField.uint32("snapsync.snap.entity.comp_len", "Component length"),
  ent_comp = ProtoField.bytes("snapsync.snap.entity.comp", "Component"),
  padding_bits = ProtoField.uint8("snapsync.snap.padding", "Padding bits"),
  netcode_type = ProtoField.uint8("snapsync.netcode_type", "netcode packet type", base.DEC,
    NETCODE_TYPES),
  netcode_sequence = ProtoField.uint64("snapsync.netcode_sequence", "netcode sequence"),
  ciphertext = ProtoField.bytes("snapsync.ciphertext", "Encrypted (ChaCha20-Poly1305)"),
}
p.fields = {}
for _, v in pairs(f) do table.insert(p.fields, v) end
-- Per-axis fields, by axis (x, y, z) or smallest-three slot.
local F_VELOCITY_K = { f.code_velocity_k_x, f.code_velocity_k_y, f.code_velocity_k_z }
local F_POSITION_K = { f.code_position_k_x, f.code_position_k_y, f.code_position_k_z }
local F_DVEL = { f.ent_dvel_x, f.ent_dvel_y, f.ent_dvel_z }
local F_VEL = { f.ent_vel_x, f.ent_vel_y, f.ent_vel_z }
local F_VEL_MPS = { f.ent_vel_x_mps, f.ent_vel_y_mps, f.ent_vel_z_mps }
local F_DPOS = { f.ent_dpos_x, f.ent_dpos_y, f.ent_dpos_z }
local F_POS = { f.ent_pos_x, f.ent_pos_y, f.ent_pos_z }
local F_POS_M = { f.ent_pos_x_m, f.ent_pos_y_m, f.ent_pos_z_m }
local F_ROT = { f.ent_rot_0, f.ent_rot_1, f.ent_rot_2 }
local F_DROT = { f.ent_drot_0, f.ent_drot_1, f.ent_drot_2 }

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

-- A snapshot part that does not decode. Raised with error() by the part decoder and caught
-- by its one pcall, so a malformed part stops where it broke; anything else raised is a bug
-- in this script and is raised again, for Wireshark to show as a Lua error.
local function bad(why)
  error({ malformed = why }, 0)
end

-- Largest value an Exp-Golomb code, a varint or an entity id may carry (engine: u32).
local U32_MAX = 4294967295

-- Bits least-significant first, as the snapshot codec writes them (engine/src/snapshot/
-- bits.rs). Every read checks the bits left first; a failed read raises `bad`.
local function bit_reader(range)
  local nbytes = range:len()
  local bytes = {}
  for i = 0, nbytes - 1 do bytes[i] = range(i, 1):uint() end
  local r = { range = range, pos = 0, len = nbytes * 8 }
  function r:left() return self.len - self.pos end
  -- `n` (≤ 32) bits as an unsigned number.
  function r:read(n, what)
    if n > self.len - self.pos then bad(what .. ": truncated") end
    local v, weight = 0, 1
    for _ = 1, n do
      local byte = bytes[math.floor(self.pos / 8)]
      v = v + (math.floor(byte / 2 ^ (self.pos % 8)) % 2) * weight
      weight = weight * 2
      self.pos = self.pos + 1
    end
    return v
  end
  -- Groups of `c` bits, lowest first, each followed by a "more" bit; over 32 bits is an
  -- error, as in BitReader::read_varint.
  function r:varint(c, what)
    local v, shift = 0, 0
    for _ = 1, 32 do
      v = v + self:read(c, what) * 2 ^ shift
      shift = shift + c
      if v > U32_MAX then bad(what .. ": varint too long") end
      if self:read(1, what) == 0 then return v end
      if shift >= 32 then bad(what .. ": varint too long") end
    end
    bad(what .. ": varint too long")
  end
  -- Exp-Golomb of order k: a run of zeros, a one, then zeros + k bits. A run that with k
  -- passes 32 bits is an error before anything more is read (BitReader::read_exp_golomb),
  -- so at most 33 bits are scanned.
  function r:eg(k, what)
    local zeros = 0
    while true do
      if self:read(1, what) == 1 then break end
      zeros = zeros + 1
      if zeros + k > 32 then bad(what .. ": Exp-Golomb prefix too long") end
    end
    local v = 2 ^ (zeros + k) + self:read(zeros + k, what) - 2 ^ k
    if v > U32_MAX then bad(what .. ": Exp-Golomb value over 32 bits") end
    return v
  end
  -- The bytes holding bits [s, e) (e defaults to the bits read so far), at least one byte.
  function r:span(s, e)
    e = e or self.pos
    local first = math.min(math.floor(s / 8), nbytes - 1)
    local last = math.min(math.max(first + 1, math.ceil(e / 8)), nbytes)
    return range(first, last - first)
  end
  return r
end

local function unzigzag(z)
  if z % 2 == 0 then return z / 2 end
  return -(z + 1) / 2
end

-- Field bits of a set of changed fields, in wire order (lowest first).
local POSITION, ROTATION, VELOCITY, COMPONENT = 1, 2, 4, 8
local FIELD_ORDER = { POSITION, ROTATION, VELOCITY, COMPONENT }
local FIELD_NAMES = { [POSITION] = "position", [ROTATION] = "rotation",
  [VELOCITY] = "velocity", [COMPONENT] = "component" }
local AXES = { "x", "y", "z" }
local QUAT = { [0] = "x", "y", "z", "w" }

local function has(set, field) return math.floor(set / field) % 2 == 1 end

local function field_names(set)
  local names = {}
  for _, fb in ipairs(FIELD_ORDER) do
    if has(set, fb) then table.insert(names, FIELD_NAMES[fb]) end
  end
  return #names > 0 and table.concat(names, ", ") or "none"
end

local function count_fields(set)
  local n = 0
  for _, fb in ipairs(FIELD_ORDER) do if has(set, fb) then n = n + 1 end end
  return n
end

-- One bit per field of `fields`, lowest first, back to a set of fields (part.rs
-- unpack_fields).
local function unpack_fields(packed, fields)
  local set, bit = 0, 0
  for _, fb in ipairs(FIELD_ORDER) do
    if has(fields, fb) then
      if math.floor(packed / 2 ^ bit) % 2 == 1 then set = set + fb end
      bit = bit + 1
    end
  end
  return set
end

-- What only the quantization config knows, from the preferences.
local function quantization()
  local q = { rotation_bits = p.prefs.rotation_bits }
  local mins = {}
  for v in string.gmatch(p.prefs.position_min, "[^,%s]+") do table.insert(mins, tonumber(v)) end
  if #mins == 1 then mins = { mins[1], mins[1], mins[1] } end
  if #mins == 3 and mins[1] and mins[2] and mins[3] then q.position_min = mins end
  q.position_step = tonumber(p.prefs.position_resolution)
  q.max_speed = tonumber(p.prefs.max_speed)
  q.velocity_step = tonumber(p.prefs.velocity_resolution)
  if q.max_speed and q.velocity_step and q.velocity_step > 0 then
    -- QuantizeConfig::velocity_steps: the range over the step, rounded half away from zero.
    q.velocity_mid = math.floor(math.floor(2 * q.max_speed / q.velocity_step + 0.5) / 2)
  end
  return q
end

-- The entity code of one section (part.rs read_code). `baseline`: the part has one, and
-- this is its update section, so positions carry the `predicted` choice.
local function read_code(r, tree, baseline)
  local start = r.pos
  local s = start
  local t = tree:add(p, r:span(s), "Entity code")
  local code = { common = {} }
  code.fields = r:read(4, "entity code fields")
  t:add(f.code_fields, r:span(s), code.fields):append_text(" (" .. field_names(code.fields) .. ")")
  code.f = count_fields(code.fields)
  for i = 1, 2 do
    s = r.pos
    code.common[i] = unpack_fields(r:read(code.f, "entity code common set"), code.fields)
    t:add(f.code_common, r:span(s), code.common[i])
      :append_text(" (" .. field_names(code.common[i]) .. ")")
  end
  code.velocity_k, code.position_k = {}, {}
  if has(code.fields, VELOCITY) then
    s = r.pos
    code.toggles = r:read(1, "entity code toggles") == 1
    t:add(f.code_toggles, r:span(s), code.toggles)
    for axis = 1, 3 do
      s = r.pos
      code.velocity_k[axis] = r:read(4, "entity code velocity order")
      t:add(F_VELOCITY_K[axis], r:span(s), code.velocity_k[axis])
    end
  end
  if has(code.fields, POSITION) then
    code.predicted = false
    if baseline then
      s = r.pos
      code.predicted = r:read(1, "entity code predicted") == 1
      t:add(f.code_predicted, r:span(s), code.predicted)
    end
    for axis = 1, 3 do
      s = r.pos
      code.position_k[axis] = r:read(4, "entity code position order")
      t:add(F_POSITION_K[axis], r:span(s), code.position_k[axis])
    end
  end
  if has(code.fields, ROTATION) then
    s = r.pos
    code.rotation_k = r:read(4, "entity code rotation order")
    t:add(f.code_rotation_k, r:span(s), code.rotation_k)
  end
  t:set_len(r:span(start):len())
  return code
end

-- One entity delta (part.rs read_entity). `spawn`: coded against the all-zero entity, so the
-- absolute values are known and shown; an update's reference is in the baseline, which a
-- capture does not hold, so its deltas are shown as they travel.
local function read_entity(r, t, code, spawn, q, what)
  local s = r.pos
  local set, how
  if code.f == 0 then
    set, how = 0, "no field changes in this section"
  elseif r:read(1, what .. " changed fields") == 1 then
    set, how = code.common[1], "common set 1"
  elseif r:read(1, what .. " changed fields") == 1 then
    set, how = code.common[2], "common set 2"
  else
    set, how = unpack_fields(r:read(code.f, what .. " changed fields"), code.fields), "listed"
  end
  t:add(f.ent_changed, r:span(s), set):append_text(" (" .. field_names(set) .. "; " .. how .. ")")
  local summary = {}

  if has(set, VELOCITY) then
    local present = true
    if code.toggles then
      s = r.pos
      present = r:read(1, what .. " velocity presence") == 1
      t:add(f.ent_vel_present, r:span(s), present)
    elseif spawn then
      -- A spawn has no old velocity, so its velocity appears: that needs presence bits.
      bad(what .. ": velocity appears in a section without presence bits")
    end
    if present then
      local shown = {}
      for axis = 1, 3 do
        s = r.pos
        local d = unzigzag(r:eg(code.velocity_k[axis], what .. " velocity " .. AXES[axis]))
        -- A spawn's reference is mid-range (zero speed), which the preferences give.
        if spawn and q.velocity_mid then
          local v = q.velocity_mid + d
          t:add(F_VEL[axis], r:span(s), v)
          local mps = v * q.velocity_step - q.max_speed
          t:add(F_VEL_MPS[axis], r:span(s), mps)
          table.insert(shown, string.format("%g", mps))
        else
          t:add(F_DVEL[axis], r:span(s), d)
          table.insert(shown, string.format("%+d", d))
        end
      end
      table.insert(summary, "velocity (" .. table.concat(shown, ", ") .. ")" ..
        ((spawn and q.velocity_mid) and " m/s" or " steps"))
    else
      table.insert(summary, "velocity removed")
    end
  end

  if has(set, POSITION) then
    local shown = {}
    for axis = 1, 3 do
      s = r.pos
      local d = unzigzag(r:eg(code.position_k[axis], what .. " position " .. AXES[axis]))
      if spawn then
        -- Against the all-zero entity: the value itself, in steps from the box's corner.
        if d < 0 then bad(what .. ": position " .. AXES[axis] .. " below the box") end
        t:add(F_POS[axis], r:span(s), d)
        if q.position_min and q.position_step then
          local m = q.position_min[axis] + d * q.position_step
          t:add(F_POS_M[axis], r:span(s), m)
          table.insert(shown, string.format("%g", m))
        else
          table.insert(shown, tostring(d))
        end
      else
        t:add(F_DPOS[axis], r:span(s), d)
        table.insert(shown, string.format("%+d", d))
      end
    end
    table.insert(summary, "position (" .. table.concat(shown, ", ") .. ")" ..
      ((spawn and q.position_min and q.position_step) and " m" or " steps"))
  end

  if has(set, ROTATION) then
    s = r.pos
    local same = r:read(1, what .. " rotation same_largest") == 1
    t:add(f.ent_rot_same, r:span(s), same)
    local values = {}
    if same then
      if spawn then
        -- The all-zero entity's largest component is x (index 0).
        t:add(f.ent_rot_largest, r:span(s), 0):append_text(" (x, unchanged)")
      end
      for i = 1, 3 do
        s = r.pos
        local d = unzigzag(r:eg(code.rotation_k, what .. " rotation"))
        if spawn then
          if d < 0 or d > 2 ^ q.rotation_bits - 2 then
            bad(what .. ": rotation component outside 0..2^bits - 2")
          end
          t:add(F_ROT[i], r:span(s), d)
          table.insert(values, tostring(d))
        else
          t:add(F_DROT[i], r:span(s), d)
          table.insert(values, string.format("%+d", d))
        end
      end
    else
      local bits = q.rotation_bits
      s = r.pos
      local largest = r:read(2, what .. " rotation largest")
      t:add(f.ent_rot_largest, r:span(s), largest):append_text(" (" .. QUAT[largest] .. ")")
      for i = 1, 3 do
        s = r.pos
        local v = r:read(bits, what .. " rotation")
        -- QuantizeConfig::rotation_max: 2^bits − 2.
        if v > 2 ^ bits - 2 then bad(what .. ": rotation component above 2^bits - 2") end
        t:add(F_ROT[i], r:span(s), v)
        table.insert(values, tostring(v))
      end
      table.insert(values, 1, "largest " .. QUAT[largest])
    end
    table.insert(summary, "rotation (" .. table.concat(values, ", ") .. ")")
  end

  if has(set, COMPONENT) then
    s = r.pos
    local present = r:read(1, what .. " component presence") == 1
    t:add(f.ent_comp_present, r:span(s), present)
    if present then
      s = r.pos
      local len = r:varint(7, what .. " component length")
      if len > math.floor(r:left() / 8) then bad(what .. ": component longer than the part") end
      t:add(f.ent_comp_len, r:span(s), len)
      if len > 0 then
        s = r.pos
        local chars = {}
        for i = 1, len do chars[i] = string.char(r:read(8, what .. " component")) end
        -- A bytes item shows exactly its range's length; the bytes start inside the first
        -- byte of that range, and len bytes from there always lie within the part.
        t:add(f.ent_comp, r.range(math.floor(s / 8), len), table.concat(chars))
      end
      table.insert(summary, "component (" .. len .. " bytes)")
    else
      table.insert(summary, "component removed")
    end
  end
  return summary
end

-- Gaps of increasing baseline indices or ids: the first is the value, then value − previous
-- − 1. Returns the values; each must fit 32 bits.
local function read_indices(r, tree, n, k, field, what)
  local out, next_value = {}, 0
  for i = 1, n do
    local s = r.pos
    local gap = r:eg(k, what .. " " .. i)
    local v = next_value + gap
    if v > U32_MAX then bad(what .. " " .. i .. ": beyond 32 bits") end
    tree:add(field, r:span(s), v):append_text(" (gap " .. gap .. ")")
    out[i] = v
    next_value = v + 1
  end
  return out
end

-- A section count (part.rs read_count): every entry takes at least one bit.
local function read_count(r, what)
  local n = r:varint(7, what)
  if n > r:left() then bad(what .. ": " .. n .. " is more than the " .. r:left() .. " bits left") end
  return n
end

-- Everything after update_count (part.rs decode_body), into `t`. Raises `bad` where the
-- part stops making sense; no loop runs longer than a count already checked against the
-- bits left.
local function dissect_body(r, t, updates, has_base, q)
  local counts = { updates = updates, despawns = 0, spawns = 0 }
  if updates > 0 then
    if not has_base then bad("updates in a full snapshot (no baseline to index)") end
    if updates > r:left() then
      bad("update count: " .. updates .. " is more than the " .. r:left() .. " bits left")
    end
    local start = r.pos
    local st = t:add(p, r:span(start), "Updates (" .. updates .. ")")
    local s = r.pos
    local k = r:read(4, "update index order")
    st:add(f.update_index_k, r:span(s), k)
    local code = read_code(r, st, true)
    local indices = read_indices(r, st, updates, k, f.update_index, "update index")
    counts.indices = indices
    for i = 1, updates do
      s = r.pos
      local et = st:add(p, r:span(s), "Update of baseline index " .. indices[i])
      local summary = read_entity(r, et, code, false, q, "update " .. i)
      et:append_text(": " .. (#summary > 0 and table.concat(summary, ", ") or "no change"))
      et:set_len(r:span(s):len())
    end
    st:set_len(r:span(start):len())
  end

  local s = r.pos
  local despawns = read_count(r, "despawn count")
  t:add(f.despawn_count, r:span(s), despawns)
  counts.despawns = despawns
  if despawns > 0 then
    if not has_base then bad("despawns in a full snapshot (no baseline to index)") end
    local dt = t:add(p, r:span(r.pos), "Despawns (" .. despawns .. ")")
    s = r.pos
    local k = r:read(4, "despawn index order")
    dt:add(f.despawn_index_k, r:span(s), k)
    local indices = read_indices(r, dt, despawns, k, f.despawn_index, "despawn index")
    -- part.rs: an entity both updated and despawned is an error. Both lists index the
    -- same baseline, so a shared index is that entity.
    local updated = {}
    for _, i in ipairs(counts.indices or {}) do updated[i] = true end
    for _, i in ipairs(indices) do
      if updated[i] then bad("baseline index " .. i .. " both updated and despawned") end
    end
  end

  s = r.pos
  local spawns = read_count(r, "spawn count")
  t:add(f.spawn_count, r:span(s), spawns)
  counts.spawns = spawns
  if spawns > 0 then
    local st = t:add(p, r:span(r.pos), "Spawns (" .. spawns .. ")")
    s = r.pos
    local k = r:read(4, "spawn id order")
    st:add(f.spawn_id_k, r:span(s), k)
    -- Spawns are coded against the all-zero entity, never predicted.
    local code = read_code(r, st, false)
    local next_id = 0
    for i = 1, spawns do
      s = r.pos
      local et = st:add(p, r:span(s), "Spawn")
      local gap = r:eg(k, "spawn id " .. i)
      local id = next_id + gap
      if id > U32_MAX then bad("spawn id " .. i .. ": beyond 32 bits") end
      et:add(f.spawn_id, r:span(s), id):append_text(" (gap " .. gap .. ")")
      next_id = id + 1
      local summary = read_entity(r, et, code, true, q, "spawn " .. i .. " (id " .. id .. ")")
      et:set_text("Spawn of entity " .. id .. ": " ..
        (#summary > 0 and table.concat(summary, ", ") or "all zero"))
      et:set_len(r:span(s):len())
    end
  end

  local left = r:left()
  if left >= 8 then bad(left .. " bits after the last entity (at most 7 may pad)") end
  s = r.pos
  local pad = r:read(left, "padding")
  t:add(f.padding_bits, r:span(s, r.len), left):append_text(pad == 0 and "" or " (not zero)")
  return counts
end

local function dissect_part(range, tree, prefix_code)
  local t = tree:add(p, range, "Snapshot part")
  local r = bit_reader(range)
  local q = quantization()
  local ok, err = pcall(function()
    local tick = r:read(32, "tick")
    t:add(f.tick, range(0, 4), tick)
    if prefix_code ~= nil and prefix_code > 0 then
      local z = prefix_code - 1
      t:add(f.input_ack, range(0, 1), tick - unzigzag(z))
    end
    local has_base = r:read(1, "baseline flag") == 1
    if has_base then
      local gap = r:varint(7, "baseline")
      if gap + 1 > tick then bad("baseline before tick zero") end
      t:add(f.baseline, range(4, 1), tick - gap - 1)
    else
      t:add(f.full, range(4, 1), true)
    end
    local index = r:read(8, "part index")
    local count = r:read(8, "part count")
    local updates = r:varint(7, "update count")
    t:add(f.part_index, range(4, 1), index)
    t:add(f.part_count, range(4, 1), count + 1)
    t:add(f.update_count, range(4, 1), updates)
    t:append_text(string.format(": tick %d, part %d of %d", tick, index + 1, count + 1))
    if index > count then bad("part index beyond part count") end
    if q.rotation_bits < 2 or q.rotation_bits > 15 then
      bad("the rotation_bits preference must be 2..15")
    end
    local c = dissect_body(r, t, updates, has_base, q)
    t:append_text(string.format(", %d updates, %d despawns, %d spawns",
      c.updates, c.despawns, c.spawns))
  end)
  if ok then return end
  if type(err) == "table" and err.malformed then
    flag(t, nil, "snapshot part malformed: " .. err.malformed)
    t:append_text(" [malformed]")
    return
  end
  error(err, 0)
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
