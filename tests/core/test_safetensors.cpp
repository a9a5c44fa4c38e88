#include <gtest/gtest.h>

#include <cmath>

#include "core/error.h"
#include "core/model_config.h"
#include "core/model_layout.h"
#include "core/safetensors.h"
#include "tests/common/temp_dir.h"

namespace troupe {
namespace {

using test::st_tensor;

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const error& e) {
    return e.what();
  }
  return "";
}

TEST(Safetensors, ReadsF32Bf16F16) {
  test::temp_dir d;
  std::vector<uint8_t> bf16 = {0x80, 0x3f, 0x00, 0xc0};  // 1.0, -2.0
  std::vector<uint8_t> f16 = {0x00, 0x3c, 0x00, 0x35};   // 1.0, 0.3125
  test::write_text(d.file("model.safetensors"),
                   test::safetensors_bytes({{"a", st_tensor{"F32", {2, 2}, test::f32_bytes({1, 2, 3, 4.5f})}},
                                            {"b", st_tensor{"BF16", {2}, bf16}},
                                            {"c", st_tensor{"F16", {2}, f16}}}));
  checkpoint c = checkpoint::open(d.str());
  ASSERT_EQ(c.tensors().size(), 3u);
  float out[4];
  tensor_to_f32(c.at("a"), out);
  EXPECT_EQ(out[3], 4.5f);
  EXPECT_EQ(c.at("a").shape, (std::vector<int64_t>{2, 2}));
  tensor_to_f32(c.at("b"), out);
  EXPECT_EQ(out[0], 1.0f);
  EXPECT_EQ(out[1], -2.0f);
  tensor_to_f32(c.at("c"), out);
  EXPECT_EQ(out[0], 1.0f);
  EXPECT_EQ(out[1], 0.3125f);
}

TEST(Safetensors, HalfConversions) {
  EXPECT_EQ(f16_to_f32(0x0001), std::ldexp(1.0f, -24));  // smallest subnormal
  EXPECT_EQ(f16_to_f32(0x7bff), 65504.0f);
  EXPECT_TRUE(std::isinf(f16_to_f32(0x7c00)));
  EXPECT_EQ(f16_to_f32(0x8000), -0.0f);
  EXPECT_EQ(bf16_to_f32(f32_to_bf16(1.0f)), 1.0f);
  // Round to nearest even: 1 + 2^-8 lies halfway between bf16 neighbours 1 and 1 + 2^-7.
  EXPECT_EQ(bf16_to_f32(f32_to_bf16(1.0f + std::ldexp(1.0f, -8))), 1.0f);
  EXPECT_EQ(bf16_to_f32(f32_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8))), 1.0f + std::ldexp(1.0f, -6));
}

TEST(Safetensors, TruncatedFileIsAClearError) {
  test::temp_dir d;
  std::string bytes = test::safetensors_bytes({{"w", st_tensor{"F32", {4}, test::f32_bytes({1, 2, 3, 4})}}});
  test::write_text(d.file("model.safetensors"), bytes.substr(0, bytes.size() - 3));
  std::string msg = error_of([&] { checkpoint::open(d.str()); });
  EXPECT_NE(msg.find("model.safetensors"), std::string::npos) << msg;
  EXPECT_NE(msg.find("'w'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("truncated"), std::string::npos) << msg;

  test::write_text(d.file("model.safetensors"), bytes.substr(0, 5));
  msg = error_of([&] { checkpoint::open(d.str()); });
  EXPECT_NE(msg.find("truncated"), std::string::npos) << msg;

  test::write_text(d.file("model.safetensors"), bytes.substr(0, 20));  // header cut short
  msg = error_of([&] { checkpoint::open(d.str()); });
  EXPECT_NE(msg.find("truncated"), std::string::npos) << msg;
}

TEST(Safetensors, BadHeaderJson) {
  test::temp_dir d;
  std::string header = "{not json";
  std::string bytes(8, '\0');
  bytes[0] = static_cast<char>(header.size());
  test::write_text(d.file("model.safetensors"), bytes + header);
  std::string msg = error_of([&] { checkpoint::open(d.str()); });
  EXPECT_NE(msg.find("bad safetensors header"), std::string::npos) << msg;
}

TEST(Safetensors, SizeMismatchNamesTensor) {
  test::temp_dir d;
  test::write_text(d.file("model.safetensors"),
                   test::safetensors_bytes({{"w", st_tensor{"F32", {5}, test::f32_bytes({1, 2, 3, 4})}}}));
  std::string msg = error_of([&] { checkpoint::open(d.str()); });
  EXPECT_NE(msg.find("'w'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[5]"), std::string::npos) << msg;
}

TEST(Safetensors, UnsupportedDtypeOnConversion) {
  test::temp_dir d;
  test::write_text(d.file("model.safetensors"),
                   test::safetensors_bytes({{"w", st_tensor{"I8", {4}, {1, 2, 3, 4}}}}));
  checkpoint c = checkpoint::open(d.str());
  float out[4];
  std::string msg = error_of([&] { tensor_to_f32(c.at("w"), out); });
  EXPECT_NE(msg.find("unsupported dtype I8"), std::string::npos) << msg;
}

TEST(Safetensors, ShardedIndex) {
  test::temp_dir d;
  test::write_text(d.file("a.safetensors"),
                   test::safetensors_bytes({{"x", st_tensor{"F32", {1}, test::f32_bytes({7})}}}));
  test::write_text(d.file("b.safetensors"),
                   test::safetensors_bytes({{"y", st_tensor{"F32", {1}, test::f32_bytes({8})}}}));
  test::write_text(d.file("model.safetensors.index.json"),
                   R"({"metadata":{},"weight_map":{"x":"a.safetensors","y":"b.safetensors"}})");
  checkpoint c = checkpoint::open(d.str());
  float v;
  tensor_to_f32(c.at("y"), &v);
  EXPECT_EQ(v, 8.0f);
  EXPECT_NE(c.at("x").file.find("a.safetensors"), std::string::npos);
  // An index that names a tensor its shard lacks.
  test::write_text(d.file("model.safetensors.index.json"),
                   R"({"weight_map":{"x":"a.safetensors","y":"b.safetensors","z":"b.safetensors"}})");
  std::string msg = error_of([&] { checkpoint::open(d.str()); });
  EXPECT_NE(msg.find("'z'"), std::string::npos) << msg;
}

TEST(Safetensors, NoCheckpointFiles) {
  test::temp_dir d;
  std::string msg = error_of([&] { checkpoint::open(d.str()); });
  EXPECT_NE(msg.find("no model.safetensors"), std::string::npos) << msg;
}

// A whole tiny Llama checkpoint, then one defect at a time.
class LayoutCheck : public ::testing::Test {
 protected:
  void SetUp() override {
    cfg = model_config::from_json({{"architectures", {"LlamaForCausalLM"}},
                                   {"vocab_size", 8},
                                   {"hidden_size", 4},
                                   {"intermediate_size", 6},
                                   {"num_hidden_layers", 1},
                                   {"num_attention_heads", 2},
                                   {"num_key_value_heads", 1}},
                                  "config.json");
    for (const auto& e : expected_tensors(cfg)) {
      int64_t n = 1;
      for (auto s : e.shape) n *= s;
      tensors[e.name] = st_tensor{"BF16", e.shape, std::vector<uint8_t>(n * 2, 0x3f)};
    }
  }
  std::string check() {
    test::write_text(dir.file("model.safetensors"), test::safetensors_bytes(tensors));
    return error_of([&] { validate_checkpoint(checkpoint::open(dir.str()), cfg); });
  }
  test::temp_dir dir;
  model_config cfg;
  std::map<std::string, st_tensor> tensors;
};

TEST_F(LayoutCheck, CompleteCheckpointPasses) { EXPECT_EQ(check(), ""); }

TEST_F(LayoutCheck, MissingTensor) {
  tensors.erase("model.layers.0.mlp.up_proj.weight");
  std::string msg = check();
  EXPECT_NE(msg.find("missing tensor 'model.layers.0.mlp.up_proj.weight'"), std::string::npos) << msg;
}

TEST_F(LayoutCheck, ExtraTensor) {
  tensors["model.layers.1.mlp.up_proj.weight"] = st_tensor{"BF16", {1}, {0, 0}};
  std::string msg = check();
  EXPECT_NE(msg.find("unexpected tensor 'model.layers.1.mlp.up_proj.weight'"), std::string::npos) << msg;
}

TEST_F(LayoutCheck, WrongShape) {
  tensors["model.norm.weight"] = st_tensor{"BF16", {5}, std::vector<uint8_t>(10, 0)};
  std::string msg = check();
  EXPECT_NE(msg.find("'model.norm.weight' has shape [5], expected [4]"), std::string::npos) << msg;
}

TEST_F(LayoutCheck, UnsupportedDtype) {
  tensors["model.norm.weight"] = st_tensor{"I32", {4}, std::vector<uint8_t>(16, 0)};
  std::string msg = check();
  EXPECT_NE(msg.find("unsupported dtype I32"), std::string::npos) << msg;
}

TEST_F(LayoutCheck, TiedEmbeddingsMakeLmHeadOptional) {
  tensors.erase("lm_head.weight");
  EXPECT_NE(check(), "");
  cfg.tie_word_embeddings = true;
  EXPECT_EQ(check(), "");
}

TEST_F(LayoutCheck, RotaryBuffersAreIgnored) {
  tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = st_tensor{"F32", {1}, test::f32_bytes({1})};
  EXPECT_EQ(check(), "");
}

}  // namespace
}  // namespace troupe
