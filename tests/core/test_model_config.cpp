#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/model_config.h"

namespace troupe {
namespace {

using json = nlohmann::json;

json llama() {
  return json{{"architectures", {"LlamaForCausalLM"}},
              {"vocab_size", 1000},
              {"hidden_size", 128},
              {"intermediate_size", 256},
              {"num_hidden_layers", 2},
              {"num_attention_heads", 4},
              {"num_key_value_heads", 2},
              {"max_position_embeddings", 512},
              {"rms_norm_eps", 1e-5},
              {"rope_theta", 10000.0},
              {"eos_token_id", {5, 7}},
              {"bos_token_id", 1}};
}

TEST(ModelConfig, ParsesLlama) {
  model_config c = model_config::from_json(llama(), "config.json");
  EXPECT_EQ(c.arch, model_arch::llama);
  EXPECT_EQ(c.head_dim, 32);
  EXPECT_EQ(c.num_kv_heads, 2);
  EXPECT_EQ(c.q_size(), 128);
  EXPECT_EQ(c.kv_size(), 64);
  EXPECT_FALSE(c.attention_bias);
  EXPECT_FALSE(c.qk_norm);
  EXPECT_EQ(c.rope.type, rope_type::none);
  EXPECT_EQ(c.eos_token_ids, (std::vector<int32_t>{5, 7}));
  EXPECT_EQ(*c.bos_token_id, 1);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-5);
}

TEST(ModelConfig, Qwen3HeadDimAndQkNorm) {
  json j = llama();
  j["architectures"] = {"Qwen3ForCausalLM"};
  j["head_dim"] = 64;
  model_config c = model_config::from_json(j, "config.json");
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.q_size(), 256);
  EXPECT_TRUE(c.qk_norm);
  EXPECT_FALSE(c.attention_bias);
}

TEST(ModelConfig, Qwen2HasBiases) {
  json j = llama();
  j["architectures"] = {"Qwen2ForCausalLM"};
  EXPECT_TRUE(model_config::from_json(j, "c").attention_bias);
}

TEST(ModelConfig, MqaDefaultKvHeads) {
  json j = llama();
  j.erase("num_key_value_heads");
  EXPECT_EQ(model_config::from_json(j, "c").num_kv_heads, 4);
  j["num_key_value_heads"] = 1;
  EXPECT_EQ(model_config::from_json(j, "c").num_kv_heads, 1);
  j["num_key_value_heads"] = 3;
  EXPECT_THROW(model_config::from_json(j, "c"), error);
}

TEST(ModelConfig, UnknownArchitectureNamesIt) {
  json j = llama();
  j["architectures"] = {"GPT2LMHeadModel"};
  try {
    model_config::from_json(j, "/m/config.json");
    FAIL();
  } catch (const error& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("/m/config.json"), std::string::npos) << msg;
    EXPECT_NE(msg.find("GPT2LMHeadModel"), std::string::npos) << msg;
  }
}

TEST(ModelConfig, MissingAndMistypedFields) {
  json j = llama();
  j.erase("hidden_size");
  EXPECT_THROW(model_config::from_json(j, "c"), error);
  j = llama();
  j["hidden_size"] = "big";
  EXPECT_THROW(model_config::from_json(j, "c"), error);
}

TEST(ModelConfig, OldAndNewRopeKeysAgree) {
  json old_style = llama();
  old_style["rope_theta"] = 500000.0;
  old_style["rope_scaling"] = {{"rope_type", "llama3"},
                               {"factor", 8.0},
                               {"low_freq_factor", 1.0},
                               {"high_freq_factor", 4.0},
                               {"original_max_position_embeddings", 64}};
  json new_style = llama();
  new_style.erase("rope_theta");
  new_style["rope_parameters"] = {{"rope_type", "llama3"},   {"rope_theta", 500000.0},
                                  {"factor", 8.0},           {"low_freq_factor", 1.0},
                                  {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 64}};
  model_config a = model_config::from_json(old_style, "a"), b = model_config::from_json(new_style, "b");
  EXPECT_EQ(a.rope.type, rope_type::llama3);
  EXPECT_EQ(b.rope.type, rope_type::llama3);
  EXPECT_EQ(rope_inv_freq(a, 10), rope_inv_freq(b, 10));
  EXPECT_DOUBLE_EQ(b.rope.theta, 500000.0);
  // "type" is the oldest spelling of the key.
  json oldest = llama();
  oldest["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};
  EXPECT_EQ(model_config::from_json(oldest, "c").rope.type, rope_type::linear);
  json bad = llama();
  bad["rope_scaling"] = {{"type", "yarn"}, {"factor", 2.0}};
  EXPECT_THROW(model_config::from_json(bad, "c"), error);
}

TEST(ModelConfig, RopeInvFreqFormulas) {
  json j = llama();  // head_dim 32
  model_config c = model_config::from_json(j, "c");
  auto base = rope_inv_freq(c, 10);
  ASSERT_EQ(base.size(), 16u);
  EXPECT_FLOAT_EQ(base[0], 1.0f);
  EXPECT_NEAR(base[1], 1.0 / std::pow(10000.0, 2.0 / 32), 1e-7);

  j["rope_scaling"] = {{"type", "linear"}, {"factor", 4.0}};
  auto lin = rope_inv_freq(model_config::from_json(j, "c"), 10);
  for (size_t i = 0; i < base.size(); ++i) EXPECT_FLOAT_EQ(lin[i], base[i] / 4.0f);

  // Dynamic NTK leaves short sequences alone and raises the base past max_position_embeddings.
  j["rope_scaling"] = {{"type", "dynamic"}, {"factor", 2.0}};
  model_config d = model_config::from_json(j, "c");
  EXPECT_EQ(rope_inv_freq(d, 100), base);
  EXPECT_EQ(rope_inv_freq(d, 512), base);
  auto longer = rope_inv_freq(d, 1024);
  const double new_base = 10000.0 * std::pow(2.0 * 1024 / 512 - 1.0, 32.0 / 30.0);
  EXPECT_NEAR(longer[1], 1.0 / std::pow(new_base, 2.0 / 32), 1e-6);
  EXPECT_FLOAT_EQ(longer[0], 1.0f);

  // llama3: high frequencies untouched, low ones divided by the factor, a smooth ramp between.
  j["rope_scaling"] = {{"rope_type", "llama3"},
                       {"factor", 8.0},
                       {"low_freq_factor", 1.0},
                       {"high_freq_factor", 4.0},
                       {"original_max_position_embeddings", 64}};
  auto l3 = rope_inv_freq(model_config::from_json(j, "c"), 10);
  const double pi = 3.14159265358979323846;
  for (size_t i = 0; i < base.size(); ++i) {
    const double wavelen = 2 * pi / base[i];
    if (wavelen < 64 / 4.0) {
      EXPECT_FLOAT_EQ(l3[i], base[i]) << i;
    } else if (wavelen > 64 / 1.0) {
      EXPECT_FLOAT_EQ(l3[i], base[i] / 8.0f) << i;
    } else {
      EXPECT_LT(l3[i], base[i]) << i;
      EXPECT_GT(l3[i], base[i] / 8.0f) << i;
    }
  }
}

TEST(ModelConfig, MistralSlidingWindow) {
  json j = llama();
  j["architectures"] = {"MistralForCausalLM"};
  j["sliding_window"] = 4096;
  EXPECT_EQ(*model_config::from_json(j, "c").sliding_window, 4096);
  j["sliding_window"] = nullptr;
  EXPECT_FALSE(model_config::from_json(j, "c").sliding_window.has_value());
}

}  // namespace
}  // namespace troupe
