// matq_run: greedy generation from a `matq compile` build with the TVM runtime alone (no Python).
//
//   matq_run BUILD_DIR --ids 1,2,3 [--max-new-tokens N] [--device cpu|cuda] [--bits R]
//
// Checks the whole build against BUILD_DIR/SHA256SUMS first, then reads BUILD_DIR/manifest.json (parameter order,
// checked against the library's own record of it; chunk, cache shapes), the weights from
// BUILD_DIR/weights.safetensors, loads BUILD_DIR/model.so into a Relax VM, runs the chunked prefill and N-1 decode
// steps (argmax; a switchable build at --bits R, default its widest) and prints one JSON object: {"prompt_tokens",
// "tokens", "prefill_s", "decode_s", "prefill_tok_s", "decode_tok_s"}. Token ids in and out: tokenization stays in Python (`tokenizers`).
#include <tvm/ffi/extra/json.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/function.h>

#include <openssl/evp.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace ffi = tvm::ffi;
using ffi::Tensor;
namespace {

// SHA-256 of a byte string as lowercase hex (OpenSSL's EVP digest), to check a build against its SHA256SUMS.
std::string Sha256Hex(const std::string& data) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (EVP_Digest(data.data(), data.size(), md, &len, EVP_sha256(), nullptr) != 1)
    throw std::runtime_error("sha256 failed (OpenSSL EVP_Digest)");
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (unsigned int i = 0; i < len; ++i) {
    out += hex[md[i] >> 4];
    out += hex[md[i] & 15];
  }
  return out;
}

// Tensor allocation and host copies through the TVM runtime's registered functions (the wheel ships the
// tvm-ffi headers complete, but not every header tvm/runtime/tensor.h includes).
Tensor Empty(const std::vector<int64_t>& shape, DLDataType dtype, DLDevice dev) {
  static ffi::Function alloc = ffi::Function::GetGlobalRequired("runtime.TVMTensorAllocWithScope");
  return alloc(ffi::Shape(shape.begin(), shape.end()), dtype, dev, ffi::Optional<ffi::String>()).cast<Tensor>();
}

void CopyFromBytes(const Tensor& t, const void* data, size_t nbytes) {
  static ffi::Function copy = ffi::Function::GetGlobalRequired("runtime.TVMTensorCopyFromBytes");
  copy(t, const_cast<void*>(data), static_cast<int64_t>(nbytes));
}

void CopyToBytes(const Tensor& t, void* data, size_t nbytes) {
  static ffi::Function copy = ffi::Function::GetGlobalRequired("runtime.TVMTensorCopyToBytes");
  copy(t, data, static_cast<int64_t>(nbytes));
}

constexpr int kPooledAllocator = 2;  // tvm.runtime.vm.VirtualMachine.POOLED_ALLOCATOR

std::string ReadFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot open " + path);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

ffi::Map<ffi::Any, ffi::Any> ParseObject(const std::string& text, const std::string& what) {
  ffi::String err;
  ffi::json::Value v = ffi::json::Parse(text, &err);
  if (!err.empty()) throw std::runtime_error("corrupt " + what + ": " + std::string(err));
  return v.cast<ffi::Map<ffi::Any, ffi::Any>>();
}

std::vector<int64_t> IntList(const ffi::Any& v) {
  std::vector<int64_t> out;
  for (const ffi::Any& x : v.cast<ffi::Array<ffi::Any>>()) out.push_back(x.cast<int64_t>());
  return out;
}

DLDataType SafetensorsDtype(const std::string& s) {
  static const std::map<std::string, DLDataType> kTypes = {
      {"F32", {kDLFloat, 32, 1}}, {"F16", {kDLFloat, 16, 1}}, {"U32", {kDLUInt, 32, 1}},
      {"I32", {kDLInt, 32, 1}},   {"U8", {kDLUInt, 8, 1}},    {"I8", {kDLInt, 8, 1}},
      {"I64", {kDLInt, 64, 1}}};
  auto it = kTypes.find(s);
  if (it == kTypes.end()) throw std::runtime_error("unsupported safetensors dtype " + s);
  return it->second;
}

// Every tensor of a safetensors file (8-byte little-endian header size, JSON header, raw data) on `dev`.
std::map<std::string, Tensor> LoadSafetensors(const std::string& path, DLDevice dev) {
  std::string bytes = ReadFile(path);
  if (bytes.size() < 8) throw std::runtime_error(path + " is truncated");
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);  // x86-64 / aarch64: little endian like the format
  if (8 + n > bytes.size()) throw std::runtime_error(path + " has a header larger than the file");
  auto header = ParseObject(bytes.substr(8, n), path + " header");
  const char* data = bytes.data() + 8 + n;
  std::map<std::string, Tensor> out;
  for (const auto& kv : header) {
    std::string name = kv.first.cast<ffi::String>();
    if (name == "__metadata__") continue;
    auto info = kv.second.cast<ffi::Map<ffi::Any, ffi::Any>>();
    std::vector<int64_t> shape = IntList(info["shape"]), off = IntList(info["data_offsets"]);
    if (off[1] > static_cast<int64_t>(bytes.size() - 8 - n)) throw std::runtime_error(path + ": bad offsets");
    Tensor t = Empty(shape, SafetensorsDtype(info["dtype"].cast<ffi::String>()), dev);
    CopyFromBytes(t, data + off[0], static_cast<size_t>(off[1] - off[0]));
    out.emplace(name, t);
  }
  return out;
}

// The build as a whole, before anything in it is parsed or loaded (matq_compile/runtime/verify.py does the same):
// SHA256SUMS lists manifest.json and model.so, every listed file matches, and no unlisted file is present.
void VerifyBuild(const std::string& dir) {
  std::istringstream sums(ReadFile(dir + "/SHA256SUMS"));
  std::set<std::string> listed;
  for (std::string line; std::getline(sums, line);) {
    if (line.size() < 67 || line.compare(64, 2, "  ") != 0 || line.find("..") != std::string::npos || line[66] == '/')
      throw std::runtime_error(dir + "/SHA256SUMS: not a 'SHA256  FILE' line: " + line.substr(0, 80));
    std::string name = line.substr(66);
    if (Sha256Hex(ReadFile(dir + "/" + name)) != line.substr(0, 64))
      throw std::runtime_error(dir + "/" + name + " is corrupt or was replaced (sha256 differs from SHA256SUMS)");
    listed.insert(name);
  }
  for (const char* name : {"manifest.json", "model.so"})
    if (!listed.count(name)) throw std::runtime_error(dir + "/SHA256SUMS does not list " + name);
  for (const auto& entry : std::filesystem::recursive_directory_iterator(dir)) {
    std::string name = entry.path().lexically_relative(dir).generic_string();
    if (entry.is_regular_file() && name != "SHA256SUMS" && !listed.count(name))
      throw std::runtime_error(dir + " holds a file its SHA256SUMS does not list: " + name);
  }
}

struct Options {
  std::string build, device = "cpu";
  std::vector<int32_t> ids;
  int max_new_tokens = 16;
  int bits = 0;  // switchable builds: the width of every layer (0: the build's default)
};

Options ParseArgs(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) throw std::runtime_error(a + " needs a value");
      return argv[++i];
    };
    if (a == "--ids") {
      std::stringstream ss(next());
      for (std::string tok; std::getline(ss, tok, ',');) o.ids.push_back(std::stoi(tok));
    } else if (a == "--max-new-tokens") {
      o.max_new_tokens = std::stoi(next());
    } else if (a == "--device") {
      o.device = next();
    } else if (a == "--bits") {
      o.bits = std::stoi(next());
    } else if (o.build.empty() && a.rfind("--", 0) != 0) {
      o.build = a;
    } else {
      throw std::runtime_error("unknown argument " + a);
    }
  }
  if (o.build.empty() || o.ids.empty() || o.max_new_tokens < 1)
    throw std::runtime_error(
        "usage: matq_run BUILD_DIR --ids 1,2,3 [--max-new-tokens N] [--device cpu|cuda] [--bits R]");
  return o;
}

// The library records each function's parameter names: its trailing ones must be the manifest's parameter order,
// or weights would be fed to the wrong parameters (an edited manifest; matq_compile/runtime/verify.py does the same).
void CheckBinding(const ffi::Module& vm, const std::vector<std::string>& names) {
  ffi::Function arity = vm->GetFunction("get_function_arity", false).value();
  ffi::Function param_name = vm->GetFunction("get_function_param_name", false).value();
  for (const char* func : {"prefill", "extend", "decode"}) {
    int64_t n = arity(ffi::String(func)).cast<int64_t>();
    int64_t first = n - static_cast<int64_t>(names.size());
    if (first <= 0)
      throw std::runtime_error(std::string("model.so: ") + func + " takes fewer parameters than manifest.json lists");
    for (size_t i = 0; i < names.size(); ++i) {
      std::string lib = param_name(ffi::String(func), static_cast<int>(first + i)).cast<ffi::String>();
      if (lib != names[i])
        throw std::runtime_error("model.so was compiled for another parameter order than manifest.json lists (" +
                                 std::string(func) + " parameter #" + std::to_string(i) + ": library '" + lib +
                                 "', manifest '" + names[i] + "'); recompile");
    }
  }
}

constexpr int64_t kFormatVersion = 3;  // runtime.FORMAT_VERSION: the manifest keys read here

// A build whose target asks for AMX-INT8 (matq_compile/amx.py) runs tile instructions, which Linux allows a
// process only after it requests the tile state (else SIGILL).
void RequestTilesIfNeeded(const ffi::Map<ffi::Any, ffi::Any>& manifest) {
  using Object = ffi::Map<ffi::Any, ffi::Any>;
  auto target = manifest["target"].cast<Object>()["target"].cast<Object>();
  if (!target.count("mattr")) return;
  bool amx = false;
  for (const ffi::Any& f : target["mattr"].cast<ffi::Array<ffi::Any>>())
    amx = amx || std::string(f.cast<ffi::String>()) == "+amx-int8";
  if (!amx) return;
#if defined(__linux__) && defined(__x86_64__)
  constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  if (syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0) return;
#endif
  throw std::runtime_error("this process may not use AMX tile registers, which the build's kernels need; "
                           "rebuild for a target without AMX");
}

class Runner {
 public:
  Runner(const Options& o) : dev_{o.device == "cuda" ? kDLCUDA : kDLCPU, 0} {
    VerifyBuild(o.build);
    auto manifest = ParseObject(ReadFile(o.build + "/manifest.json"), "manifest.json");
    if (!manifest.count("format_version") || manifest["format_version"].cast<int64_t>() != kFormatVersion)
      throw std::runtime_error(o.build + " is a build of another format than " + std::to_string(kFormatVersion) +
                               " (recompile it with `matq compile`)");
    RequestTilesIfNeeded(manifest);
    auto model = manifest["model"].cast<ffi::Map<ffi::Any, ffi::Any>>();
    chunk_ = manifest["chunk"].cast<int64_t>();
    max_seq_ = model["max_seq_len"].cast<int64_t>();
    // the cache must hold max_seq_len positions: V is [layers, kv_heads, max_seq, head_dim] (lower/kv_cache.py)
    std::vector<int64_t> v_shape = IntList(manifest["kv_cache"].cast<ffi::Map<ffi::Any, ffi::Any>>()["v"]);
    if (v_shape.size() != 4 || v_shape[2] != max_seq_)
      throw std::runtime_error("manifest.json: model max_seq_len " + std::to_string(max_seq_) +
                               " does not fit its kv_cache shapes; recompile");
    auto weights = LoadSafetensors(o.build + "/weights.safetensors", dev_);
    std::vector<std::string> names;
    for (const ffi::Any& p : manifest["params"].cast<ffi::Array<ffi::Any>>()) {
      std::string name = p.cast<ffi::Map<ffi::Any, ffi::Any>>()["name"].cast<ffi::String>();
      auto it = weights.find(name);
      if (it == weights.end()) throw std::runtime_error("weights.safetensors lacks " + name);
      params_.push_back(it->second);
      names.push_back(name);
    }
    SetBits(manifest, o.bits);
    auto cache = manifest["kv_cache"].cast<ffi::Map<ffi::Any, ffi::Any>>();  // the compiler's cache layout
    std::string kv_dtype = cache.count("dtype") ? std::string(cache["dtype"].cast<ffi::String>()) : "";
    if (kv_dtype != "float32" && kv_dtype != "float16")  // lower/kv_cache.py DTYPES
      throw std::runtime_error("manifest.json: kv_cache dtype '" + kv_dtype + "' is not float32 or float16; recompile");
    DLDataType kv{kDLFloat, static_cast<uint8_t>(kv_dtype == "float16" ? 16 : 32), 1};
    kt_ = Empty(IntList(cache["kt"]), kv, dev_);
    vc_ = Empty(IntList(cache["v"]), kv, dev_);
    ffi::Module lib = ffi::Module::LoadFromFile(o.build + "/model.so");
    ffi::Module vm = lib->GetFunction("vm_load_executable", false).value()().cast<ffi::Module>();
    if (dev_.device_type == kDLCPU) {
      vm->GetFunction("vm_initialization", false).value()(static_cast<int>(kDLCPU), 0, kPooledAllocator);
    } else {  // the VM runs shape functions on the CPU
      vm->GetFunction("vm_initialization", false).value()(static_cast<int>(dev_.device_type), 0, kPooledAllocator,
                                                          static_cast<int>(kDLCPU), 0, kPooledAllocator);
    }
    CheckBinding(vm, names);
    prefill_ = vm->GetFunction("prefill", false).value();
    extend_ = vm->GetFunction("extend", false).value();
    decode_ = vm->GetFunction("decode", false).value();
    vm_ = vm;
  }

  // Appends ids to the cache in chunks (the last one zero-padded); argmax of the last real token's logits.
  int32_t Prefill(const std::vector<int32_t>& ids) {
    if (pos_ + (ids.size() + chunk_ - 1) / chunk_ * chunk_ > static_cast<size_t>(max_seq_))
      throw std::runtime_error("prompt exceeds max_seq_len");
    int32_t next = -1;
    for (size_t s = 0; s < ids.size(); s += chunk_) {
      size_t n = std::min<size_t>(chunk_, ids.size() - s);
      std::vector<int32_t> piece(chunk_, 0);
      std::copy(ids.begin() + s, ids.begin() + s + n, piece.begin());
      if (s + n < ids.size())  // not the last chunk: no logits (extend skips the LM head)
        Call(extend_, Ids(piece), {ffi::Shape({pos_})});
      else
        next = Argmax(Call(prefill_, Ids(piece), {ffi::Shape({pos_}), ffi::Shape({static_cast<int64_t>(n) - 1})}));
      pos_ += static_cast<int64_t>(n);
    }
    return next;
  }

  int32_t Decode(int32_t tok) {
    if (pos_ + 1 > max_seq_) throw std::runtime_error("generation exceeds max_seq_len");
    int32_t next = Argmax(Call(decode_, Ids({tok}), {ffi::Shape({pos_})}));
    pos_ += 1;
    return next;
  }

 private:
  Tensor Ids(const std::vector<int32_t>& ids) {
    Tensor t = Empty({1, static_cast<int64_t>(ids.size())}, DLDataType{kDLInt, 32, 1}, dev_);
    CopyFromBytes(t, ids.data(), ids.size() * sizeof(int32_t));
    return t;
  }

  // A switchable build takes one more input after the caches: the width of each kernel unit
  // (matq_compile/runtime Model.set_bits does the same). A one-width build refuses --bits.
  void SetBits(const ffi::Map<ffi::Any, ffi::Any>& manifest, int bits) {
    if (manifest.count("switch") == 0) {
      if (bits != 0) throw std::runtime_error("--bits needs a switchable build (matq compile --switchable)");
      return;
    }
    auto sw = manifest["switch"].cast<ffi::Map<ffi::Any, ffi::Any>>();
    int64_t r = bits != 0 ? bits : sw["default_bits"].cast<int64_t>();
    bool served = false;
    for (const ffi::Any& w : sw["widths"].cast<ffi::Array<ffi::Any>>()) served |= w.cast<int64_t>() == r;
    if (!served) throw std::runtime_error("this build does not serve --bits " + std::to_string(r));
    size_t units = sw["units"].cast<ffi::Array<ffi::Any>>().size();
    bits_ = ffi::Shape(std::vector<int64_t>(units, r));
  }

  // f(ids, *shapes, kt_cache, v_cache, [bits], *params) -> the first element of the returned tuple (the logits
  // [1, V]; extend returns only the caches, and its result is dropped).
  Tensor Call(const ffi::Function& f, Tensor ids, const std::vector<ffi::Shape>& shapes) {
    std::vector<ffi::AnyView> args;
    args.emplace_back(ids);
    for (const ffi::Shape& s : shapes) args.emplace_back(s);
    args.emplace_back(kt_);
    args.emplace_back(vc_);
    if (bits_.has_value()) args.emplace_back(bits_.value());
    for (const Tensor& p : params_) args.emplace_back(p);
    ffi::Any ret;
    f.CallPacked(args.data(), static_cast<int32_t>(args.size()), &ret);
    return ret.cast<ffi::Array<ffi::Any>>()[0].cast<Tensor>();
  }

  static int32_t Argmax(const Tensor& logits) {
    std::vector<float> v(logits.shape()[logits.ndim() - 1]);
    CopyToBytes(logits, v.data(), v.size() * sizeof(float));
    return static_cast<int32_t>(std::max_element(v.begin(), v.end()) - v.begin());
  }

  DLDevice dev_;
  int64_t chunk_ = 16, max_seq_ = 0, pos_ = 0;
  std::vector<Tensor> params_;
  Tensor kt_, vc_;
  ffi::Optional<ffi::Shape> bits_;
  ffi::Optional<ffi::Module> vm_;  // owns the functions below
  ffi::Function prefill_, extend_, decode_;
};

double Seconds(std::chrono::steady_clock::time_point a, std::chrono::steady_clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

}  // namespace

int main(int argc, char** argv) {
  // TVM's CPU pool defaults to half the logical cores on x86 (it assumes SMT); use them all unless the user chose
  // (read once, when the first parallel kernel runs; matq_compile/_threads.py does the same from Python, counting the
  // process's CPU affinity where this counts the machine's hardware threads)
  setenv("TVM_NUM_THREADS", std::to_string(std::max(1u, std::thread::hardware_concurrency())).c_str(), 0);
  try {
    Options o = ParseArgs(argc, argv);
    Runner runner(o);
    auto t0 = std::chrono::steady_clock::now();
    std::vector<int32_t> tokens{runner.Prefill(o.ids)};
    auto t1 = std::chrono::steady_clock::now();
    while (static_cast<int>(tokens.size()) < o.max_new_tokens) tokens.push_back(runner.Decode(tokens.back()));
    auto t2 = std::chrono::steady_clock::now();
    double prefill_s = Seconds(t0, t1), decode_s = Seconds(t1, t2);
    std::printf("{\"prompt_tokens\": %zu, \"tokens\": [", o.ids.size());
    for (size_t i = 0; i < tokens.size(); ++i) std::printf("%s%d", i ? ", " : "", tokens[i]);
    std::printf("], \"prefill_s\": %.6f, \"decode_s\": %.6f, \"prefill_tok_s\": %.3f, \"decode_tok_s\": %.3f}\n",
                prefill_s, decode_s, o.ids.size() / prefill_s,
                tokens.size() > 1 ? (tokens.size() - 1) / decode_s : 0.0);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "matq_run: %s\n", e.what());
    return 1;
  }
}
