// A scratch directory for tests that read files: fresh per object, removed with its contents when
// the object goes. Shared by the test suites.
#pragma once

#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>

namespace fp8kv::testing {

class TempDir {
 public:
  // mkdtemp: a new name every time, so concurrent test processes never share a directory.
  explicit TempDir(const std::string& prefix = "fp8kv_test_") {
    std::string tmpl = (std::filesystem::temp_directory_path() / (prefix + "XXXXXX")).string();
    if (::mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp failed for " + tmpl);
    path_ = tmpl;
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }
  // Writes `text` to `name` (a relative path; missing directories are created) and returns its path.
  std::string write(const std::string& name, const std::string& text) const {
    const std::filesystem::path file_path = std::filesystem::path(path_) / name;
    std::filesystem::create_directories(file_path.parent_path());
    std::ofstream(file_path) << text;
    return file_path.string();
  }

 private:
  std::string path_;
};

}  // namespace fp8kv::testing
