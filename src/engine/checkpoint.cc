#include "fp8kv/engine/checkpoint.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <limits>
#include <set>
#include <utility>

#include <nlohmann/json.hpp>

#include "fp8kv/error.h"
#include "fp8kv/fp8.h"
#include "fp8kv/half.h"

namespace fp8kv::engine {
namespace {

// The safetensors file layout: [u64 little-endian header length N][N bytes of JSON][data], where
// every tensor's "data_offsets" [begin, end) are relative to the start of the data section.
constexpr size_t kHeaderLengthBytes = 8;
// Writers pad the JSON with spaces so that the data section starts 8-byte aligned.
constexpr size_t kHeaderAlignment = 8;
// The reference implementation refuses headers above 100 MB; a larger length is garbage, and
// refusing it early keeps a corrupt length from reading as "the whole file is header".
constexpr uint64_t kMaxHeaderBytes = 100u * 1000u * 1000u;
constexpr const char* kIndexFile = "model.safetensors.index.json";
constexpr const char* kSingleFile = "model.safetensors";

struct DTypeName {
  const char* name;
  DType dtype;
};
// The dtypes a checkpoint may hold: weights in 16/32-bit float, FP8 for quantised data and scales.
constexpr DTypeName kDTypeNames[] = {
    {"BF16", DType::kBFloat16}, {"F16", DType::kFloat16},     {"F32", DType::kFloat32},
    {"F8_E4M3", DType::kFp8E4M3}, {"F8_E5M2", DType::kFp8E5M2},
};

std::string shape_string(const std::vector<int64_t>& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + "]";
}

std::string tensor_error(const std::string& name, const std::string& what) { return "tensor '" + name + "': " + what; }

bool file_exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

std::string join_path(const std::string& dir, const std::string& name) {
  if (dir.empty() || dir.back() == '/') return dir + name;
  return dir + "/" + name;
}

nlohmann::json parse_json_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw FileError(path, std::string("cannot open: ") + std::strerror(errno));
  try {
    return nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw FileError(path, std::string("not valid JSON: ") + e.what());
  }
}

}  // namespace

// One read-only mapping of a whole safetensors file.
struct Checkpoint::Mapping {
  std::string path;
  const uint8_t* base = nullptr;
  size_t size = 0;

  explicit Mapping(std::string file) : path(std::move(file)) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw FileError(path, std::string("cannot open: ") + std::strerror(errno));
    struct stat st;
    if (::fstat(fd, &st) != 0) {
      const int err = errno;
      ::close(fd);
      throw FileError(path, std::string("cannot stat: ") + std::strerror(err));
    }
    size = static_cast<size_t>(st.st_size);
    if (size < kHeaderLengthBytes) {
      ::close(fd);
      throw FileError(path, "file is " + std::to_string(size) + " bytes, too short for the 8-byte header length "
                            "(truncated or not a safetensors file)");
    }
    void* p = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
    const int err = errno;
    ::close(fd);  // the mapping keeps the file referenced
    if (p == MAP_FAILED) throw FileError(path, std::string("cannot mmap: ") + std::strerror(err));
    base = static_cast<const uint8_t*>(p);
  }
  ~Mapping() {
    if (base) ::munmap(const_cast<uint8_t*>(base), size);
  }
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;

  // Parses and validates the header; returns the file's tensors with data pointers into the map.
  std::vector<CheckpointTensor> tensors() const {
    uint64_t header_len = 0;
    for (size_t i = 0; i < kHeaderLengthBytes; ++i) header_len |= static_cast<uint64_t>(base[i]) << (8 * i);
    const uint64_t available = size - kHeaderLengthBytes;
    if (header_len > available || header_len > kMaxHeaderBytes) {
      throw FileError(path, "header length " + std::to_string(header_len) + " does not fit: the file has " +
                                std::to_string(available) + " bytes after the length field (truncated or corrupt)");
    }
    const char* header = reinterpret_cast<const char*>(base + kHeaderLengthBytes);

    // Duplicate tensor names are corruption that a plain parse would hide (the last one wins).
    std::set<std::string> seen;
    std::string duplicate;
    const nlohmann::json::parser_callback_t reject_duplicates =
        [&](int depth, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
          if (depth == 1 && event == nlohmann::json::parse_event_t::key) {
            const std::string key = parsed.get<std::string>();
            if (!seen.insert(key).second && duplicate.empty()) duplicate = key;
          }
          return true;
        };
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(header, header + header_len, reject_duplicates);
    } catch (const nlohmann::json::exception& e) {
      throw FileError(path, std::string("header is not valid JSON: ") + e.what());
    }
    if (!duplicate.empty()) throw FileError(path, tensor_error(duplicate, "appears twice in the header"));
    if (!j.is_object()) throw FileError(path, "header is not a JSON object");

    const uint8_t* data = base + kHeaderLengthBytes + header_len;
    const uint64_t data_size = available - header_len;
    std::vector<CheckpointTensor> out;
    for (auto it = j.begin(); it != j.end(); ++it) {
      const std::string& name = it.key();
      if (name == "__metadata__") continue;
      const nlohmann::json& entry = it.value();
      if (!entry.is_object()) throw FileError(path, tensor_error(name, "header entry is not an object"));
      CheckpointTensor t;
      t.name = name;
      t.file = path;

      const auto dtype_it = entry.find("dtype");
      if (dtype_it == entry.end() || !dtype_it->is_string()) {
        throw FileError(path, tensor_error(name, "has no \"dtype\" string"));
      }
      const std::string dtype = dtype_it->get<std::string>();
      const auto known = std::find_if(std::begin(kDTypeNames), std::end(kDTypeNames),
                                      [&](const DTypeName& d) { return dtype == d.name; });
      if (known == std::end(kDTypeNames)) {
        throw FileError(path, tensor_error(name, "dtype " + dtype + " is not supported (BF16, F16, F32, F8_E4M3, F8_E5M2)"));
      }
      t.dtype = known->dtype;

      const auto shape_it = entry.find("shape");
      if (shape_it == entry.end() || !shape_it->is_array()) {
        throw FileError(path, tensor_error(name, "has no \"shape\" array"));
      }
      // numel is kept below 2^62 so that numel * dtype size cannot overflow.
      constexpr uint64_t kMaxElements = uint64_t{1} << 62;
      uint64_t numel = 1;
      for (const auto& d : *shape_it) {
        if (!d.is_number_integer() || d.get<int64_t>() < 0) {
          throw FileError(path, tensor_error(name, "shape " + shape_it->dump() + " has an entry that is not a non-negative integer"));
        }
        const uint64_t dim = d.get<uint64_t>();
        if (dim != 0 && numel > kMaxElements / dim) {
          throw FileError(path, tensor_error(name, "shape " + shape_it->dump() + " has too many elements"));
        }
        numel *= dim;
        t.shape.push_back(static_cast<int64_t>(dim));
      }

      const auto offsets_it = entry.find("data_offsets");
      if (offsets_it == entry.end() || !offsets_it->is_array() || offsets_it->size() != 2 ||
          !(*offsets_it)[0].is_number_unsigned() || !(*offsets_it)[1].is_number_unsigned()) {
        throw FileError(path, tensor_error(name, "\"data_offsets\" must be two non-negative integers"));
      }
      const uint64_t begin = (*offsets_it)[0].get<uint64_t>();
      const uint64_t end = (*offsets_it)[1].get<uint64_t>();
      if (begin > end) {
        throw FileError(path, tensor_error(name, "data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) +
                                                     ") end before they begin"));
      }
      if (end > data_size) {
        throw FileError(path, tensor_error(name, "data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) +
                                                     ") run past the data section of " + std::to_string(data_size) +
                                                     " bytes (truncated file?)"));
      }
      const uint64_t expected = numel * dtype_size(t.dtype);
      if (end - begin != expected) {
        throw FileError(path, tensor_error(name, "data_offsets span " + std::to_string(end - begin) + " bytes but shape " +
                                                     shape_string(t.shape) + " of " + dtype + " needs " +
                                                     std::to_string(expected)));
      }
      t.data = data + begin;
      t.nbytes = static_cast<size_t>(expected);
      out.push_back(std::move(t));
    }

    // The tensors must tile the data section exactly, as the safetensors format requires: an
    // overlap, a gap or bytes past the last tensor mean the header and the data disagree.
    // Empty tensors occupy nothing and may sit anywhere.
    std::vector<const CheckpointTensor*> by_offset;
    for (const auto& t : out) {
      if (t.nbytes > 0) by_offset.push_back(&t);
    }
    std::sort(by_offset.begin(), by_offset.end(),
              [](const CheckpointTensor* a, const CheckpointTensor* b) { return a->data < b->data; });
    const uint8_t* expected_start = data;
    const CheckpointTensor* prev = nullptr;
    for (const CheckpointTensor* t : by_offset) {
      const auto* start = static_cast<const uint8_t*>(t->data);
      if (start < expected_start) {
        throw FileError(path, tensor_error(t->name, "data overlaps tensor '" + prev->name + "'"));
      }
      if (start > expected_start) {
        throw FileError(path, tensor_error(t->name, std::to_string(start - expected_start) + " unused bytes before its data" +
                                                        (prev ? " (after tensor '" + prev->name + "')" : std::string())));
      }
      expected_start = start + t->nbytes;
      prev = t;
    }
    if (expected_start != data + data_size) {
      throw FileError(path, std::to_string(data + data_size - expected_start) + " bytes after the last tensor" +
                                (prev ? " ('" + prev->name + "')" : std::string()) + ": the header does not describe the whole file");
    }
    return out;
  }
};

Checkpoint::Checkpoint() = default;
Checkpoint::Checkpoint(Checkpoint&&) noexcept = default;
Checkpoint& Checkpoint::operator=(Checkpoint&&) noexcept = default;
Checkpoint::~Checkpoint() = default;

Checkpoint Checkpoint::open(const std::string& model_dir) {
  Checkpoint ckpt;
  const std::string index_path = join_path(model_dir, kIndexFile);
  const std::string single_path = join_path(model_dir, kSingleFile);

  auto add_file = [&](const std::string& path) {
    ckpt.mappings_.push_back(std::make_unique<Mapping>(path));
    for (auto& t : ckpt.mappings_.back()->tensors()) {
      const auto previous = ckpt.tensors_.find(t.name);
      if (previous != ckpt.tensors_.end()) {
        throw FileError(path, tensor_error(t.name, "is also in " + previous->second.file));
      }
      std::string name = t.name;
      ckpt.tensors_.emplace(std::move(name), std::move(t));
    }
  };

  // transformers looks for the single file first, then the index; so do we.
  if (file_exists(single_path)) {
    add_file(single_path);
  } else if (file_exists(index_path)) {
    const nlohmann::json index = parse_json_file(index_path);
    const auto map_it = index.is_object() ? index.find("weight_map") : index.end();
    if (map_it == index.end() || !map_it->is_object()) {
      throw FileError(index_path, "field 'weight_map' is missing or not an object");
    }
    // Shards in first-mention order, each opened once.
    std::vector<std::string> shards;
    for (auto it = map_it->begin(); it != map_it->end(); ++it) {
      if (!it->is_string()) throw FileError(index_path, "weight_map entry for tensor '" + it.key() + "' is not a file name");
      const std::string shard = it->get<std::string>();
      if (shard.empty() || shard.find('/') != std::string::npos) {
        throw FileError(index_path, "weight_map entry for tensor '" + it.key() + "' names '" + shard +
                                        "', which is not a file in the model directory");
      }
      if (std::find(shards.begin(), shards.end(), shard) == shards.end()) shards.push_back(shard);
    }
    for (const auto& shard : shards) {
      const std::string path = join_path(model_dir, shard);
      if (!file_exists(path)) throw FileError(path, std::string("shard listed in ") + kIndexFile + " is missing");
      add_file(path);
    }
    // The index and the shards must agree on where every listed tensor lives.
    for (auto it = map_it->begin(); it != map_it->end(); ++it) {
      const std::string listed = join_path(model_dir, it->get<std::string>());
      const auto t = ckpt.tensors_.find(it.key());
      if (t == ckpt.tensors_.end()) {
        throw FileError(listed, tensor_error(it.key(), std::string("is listed in ") + kIndexFile + " but not in the file"));
      }
      if (t->second.file != listed) {
        throw FileError(listed, tensor_error(it.key(), std::string("is listed in ") + kIndexFile + " here but stored in " +
                                                           t->second.file));
      }
    }
  } else {
    throw FileError(model_dir, std::string("no ") + kSingleFile + " or " + kIndexFile + " in the model directory");
  }
  return ckpt;
}

bool Checkpoint::has(const std::string& name) const { return tensors_.count(name) != 0; }

const CheckpointTensor* Checkpoint::find(const std::string& name) const {
  const auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

const CheckpointTensor& Checkpoint::get(const std::string& name, const std::vector<int64_t>& expected_shape) const {
  const CheckpointTensor* t = find(name);
  if (!t) {
    // A missing tensor has no file of its own: name the file (or the index) that was searched.
    std::string where = mappings_.empty() ? std::string("checkpoint") : mappings_.front()->path;
    if (mappings_.size() > 1) {
      const size_t slash = where.rfind('/');
      where = (slash == std::string::npos ? std::string() : where.substr(0, slash + 1)) + kIndexFile;
    }
    throw FileError(where, tensor_error(name, "is missing from the checkpoint"));
  }
  if (t->shape != expected_shape) {
    throw FileError(t->file, tensor_error(name, "has shape " + shape_string(t->shape) + ", the model expects " +
                                                    shape_string(expected_shape)));
  }
  return *t;
}

std::vector<std::string> Checkpoint::names() const {
  std::vector<std::string> out;
  out.reserve(tensors_.size());
  for (const auto& [name, t] : tensors_) out.push_back(name);
  return out;
}

std::vector<float> Checkpoint::read_float(const std::string& name) const {
  const CheckpointTensor* found = find(name);
  const CheckpointTensor* t = found ? found : &get(name, {});  // get() throws the missing-tensor error
  const size_t count = t->nbytes / dtype_size(t->dtype);
  std::vector<float> out(count);
  const auto* bytes = static_cast<const uint8_t*>(t->data);
  // memcpy per element: offsets need not be aligned to the element size.
  for (size_t i = 0; i < count; ++i) {
    switch (t->dtype) {
      case DType::kFloat32: std::memcpy(&out[i], bytes + 4 * i, 4); break;
      case DType::kBFloat16: {
        Bf16 v;
        std::memcpy(&v.bits, bytes + 2 * i, 2);
        out[i] = v.to_float();
        break;
      }
      case DType::kFloat16: {
        Fp16 v;
        std::memcpy(&v.bits, bytes + 2 * i, 2);
        out[i] = v.to_float();
        break;
      }
      case DType::kFp8E4M3: out[i] = Fp8E4M3{bytes[i]}.to_float(); break;
      case DType::kFp8E5M2: out[i] = Fp8E5M2{bytes[i]}.to_float(); break;
      default: throw FileError(t->file, tensor_error(name, std::string("dtype ") + dtype_name(t->dtype) + " cannot be read as float"));
    }
  }
  return out;
}

void write_safetensors(const std::string& path, const std::vector<CheckpointTensor>& tensors) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  uint64_t offset = 0;
  std::set<std::string> names;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const CheckpointTensor& t = tensors[i];
    const std::string arg = "tensors[" + std::to_string(i) + "]";
    FP8KV_REQUIRE(!t.name.empty() && t.name != "__metadata__", arg, "name '", t.name, "' is empty or reserved");
    FP8KV_REQUIRE(names.insert(t.name).second, arg, "name '", t.name, "' appears twice");
    const auto known = std::find_if(std::begin(kDTypeNames), std::end(kDTypeNames),
                                    [&](const DTypeName& d) { return t.dtype == d.dtype; });
    FP8KV_REQUIRE(known != std::end(kDTypeNames), arg, "dtype ", dtype_name(t.dtype), " cannot be stored in a checkpoint");
    uint64_t numel = 1;
    for (int64_t d : t.shape) {
      FP8KV_REQUIRE(d >= 0, arg, "shape ", shape_string(t.shape), " has a negative dimension");
      numel *= static_cast<uint64_t>(d);
    }
    FP8KV_REQUIRE(t.nbytes == numel * dtype_size(t.dtype), arg, "nbytes ", t.nbytes, " != ", numel, " elements of ",
                  dtype_name(t.dtype));
    FP8KV_REQUIRE(t.data != nullptr || t.nbytes == 0, arg, "data is null");
    header[t.name] = {{"dtype", known->name}, {"shape", t.shape}, {"data_offsets", {offset, offset + t.nbytes}}};
    offset += t.nbytes;
  }
  std::string json = header.dump();
  json.append((kHeaderAlignment - json.size() % kHeaderAlignment) % kHeaderAlignment, ' ');

  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) throw FileError(path, std::string("cannot create: ") + std::strerror(errno));
  uint8_t length[kHeaderLengthBytes];
  for (size_t i = 0; i < kHeaderLengthBytes; ++i) length[i] = static_cast<uint8_t>(static_cast<uint64_t>(json.size()) >> (8 * i));
  out.write(reinterpret_cast<const char*>(length), sizeof(length));
  out.write(json.data(), static_cast<std::streamsize>(json.size()));
  for (const auto& t : tensors) out.write(static_cast<const char*>(t.data), static_cast<std::streamsize>(t.nbytes));
  out.close();
  if (!out) throw FileError(path, "write failed");
}

}  // namespace fp8kv::engine
