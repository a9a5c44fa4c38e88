#include <gtest/gtest.h>

#include "gateway/auth.h"
#include "gateway/openai_request.h"
#include "gateway/openai_response.h"
#include "tests/gateway/fake_engine.h"

namespace troupe::gateway {
namespace {

class OpenAIRequest : public ::testing::Test {
 protected:
  OpenAIRequest() : tok_(tokenizer::from_json(testing::fake_engine::tokenizer_json())) {
    ctx_.tok = &tok_;
    ctx_.vocab_size = 257;
    ctx_.max_model_len = 64;
    ctx_.model_name = "m";
    renderer_ = [](const json& messages, const json& options) {
      std::string out;
      for (const auto& m : messages)
        out += m["role"].get<std::string>() + ":" + m["content"].get<std::string>() + "\n";
      if (options.value("add_generation_prompt", false)) out += "assistant:";
      return out;
    };
  }

  // The api_error a body produces (status 0 when it parses).
  api_error error_of(const std::string& body, api_kind kind = api_kind::completion) {
    try {
      const json j = parse_json_object(body);
      if (kind == api_kind::chat) {
        parse_chat_request(j, ctx_);
      } else if (kind == api_kind::websocket) {
        parse_ws_generate(j, ctx_);
      } else {
        parse_completion_request(j, ctx_);
      }
    } catch (const api_error& e) {
      return e;
    }
    return api_error(0, "");
  }

  tokenizer tok_;
  request_context ctx_;
  prompt_renderer renderer_;
};

TEST_F(OpenAIRequest, CompletionDefaultsAndFields) {
  const json j = parse_json_object(
      R"({"model":"m","prompt":"hi","max_tokens":5,"temperature":0.5,"top_p":0.9,"top_k":3,"min_p":0.1,
          "seed":7,"stop":["x","y"],"n":2,"logprobs":3,"ignore_eos":true,"stream":true,
          "stream_options":{"include_usage":true}})");
  const generation_request r = parse_completion_request(j, ctx_);
  EXPECT_EQ(r.prompt_ids, (std::vector<int32_t>{'h', 'i'}));
  EXPECT_EQ(r.params.max_tokens, 5);
  EXPECT_FLOAT_EQ(r.params.temperature, 0.5f);
  EXPECT_EQ(r.params.top_k, 3);
  EXPECT_EQ(r.params.seed, std::optional<uint64_t>(7));
  EXPECT_EQ(r.params.stop, (std::vector<std::string>{"x", "y"}));
  EXPECT_EQ(r.params.n, 2);
  EXPECT_EQ(r.params.logprobs, 3);
  EXPECT_TRUE(r.logprobs && r.stream && r.include_usage && r.params.ignore_eos);

  const generation_request d = parse_completion_request(parse_json_object(R"({"prompt":[1,2,3]})"), ctx_);
  EXPECT_EQ(d.params.max_tokens, 16);  // OpenAI's default for completions
  EXPECT_EQ(d.prompt_ids, (std::vector<int32_t>{1, 2, 3}));
  EXPECT_FALSE(d.stream);
}

TEST_F(OpenAIRequest, MalformedBodies) {
  EXPECT_EQ(error_of("{").status, 400);
  EXPECT_EQ(error_of("[1]").status, 400);
  EXPECT_EQ(error_of(R"({"prompt":"a","temperature":NaN})").status, 400);
  EXPECT_EQ(error_of("{\"prompt\":\"\xff\"}").status, 400);  // invalid UTF-8
  EXPECT_EQ(error_of(R"({"max_tokens":3})").status, 400);    // no prompt
}

TEST_F(OpenAIRequest, WrongTypesNameTheParam) {
  const api_error e = error_of(R"({"prompt":"a","temperature":"hot"})");
  EXPECT_EQ(e.status, 400);
  EXPECT_EQ(e.param, "temperature");
  EXPECT_EQ(error_of(R"({"prompt":"a","max_tokens":1.5})").param, "max_tokens");
  EXPECT_EQ(error_of(R"({"prompt":"a","stream":"yes"})").param, "stream");
  EXPECT_EQ(error_of(R"({"prompt":"a","stop":[1]})").param, "stop");
  EXPECT_EQ(error_of(R"({"prompt":{"a":1}})").param, "prompt");
  EXPECT_EQ(error_of(R"({"prompt":"a","seed":1.5})").param, "seed");
}

TEST_F(OpenAIRequest, OutOfRangeParameters) {
  for (const char* body : {R"({"prompt":"a","temperature":-1})",
                           R"({"prompt":"a","temperature":1e9})",
                           R"({"prompt":"a","top_p":0})",
                           R"({"prompt":"a","top_p":1.5})",
                           R"({"prompt":"a","top_k":-2})",
                           R"({"prompt":"a","min_p":2})",
                           R"({"prompt":"a","presence_penalty":3})",
                           R"({"prompt":"a","frequency_penalty":-3})",
                           R"({"prompt":"a","repetition_penalty":0})",
                           R"({"prompt":"a","n":0})",
                           R"({"prompt":"a","n":1000})",
                           R"({"prompt":"a","logprobs":21})",
                           R"({"prompt":"a","max_tokens":0})",
                           R"({"prompt":"a","max_tokens":99999999999})",
                           R"({"prompt":"a","stop":["a","b","c","d","e"]})",
                           R"({"prompt":"a","stop":[""]})",
                           R"({"prompt":"a","stop_token_ids":[999]})",
                           R"({"prompt":"a","temperature":1e999})",
                           R"({"prompt":[300]})",
                           R"({"prompt":[-1]})",
                           R"({"prompt":"a","echo":true})",
                           R"({"prompt":"","max_tokens":1})"}) {
    EXPECT_EQ(error_of(body).status, 400) << body;
  }
  EXPECT_EQ(error_of(R"({"prompt":"a","top_k":-1,"min_p":0,"top_p":1,"temperature":0})").status, 0);
}

TEST_F(OpenAIRequest, ContextLength) {
  const api_error e = error_of(R"({"prompt":"abcd","max_tokens":61})");
  EXPECT_EQ(e.status, 400);
  EXPECT_NE(std::string(e.what()).find("maximum context length is 64"), std::string::npos) << e.what();
  EXPECT_EQ(error_of(R"({"prompt":"abcd","max_tokens":60})").status, 0);
  EXPECT_EQ(error_of(std::string(R"({"prompt":")") + std::string(64, 'a') + "\"}").status, 400);
}

TEST_F(OpenAIRequest, UnknownModelIs404) {
  const api_error e = error_of(R"({"model":"other","prompt":"a"})");
  EXPECT_EQ(e.status, 404);
  EXPECT_EQ(e.code, "model_not_found");
}

TEST_F(OpenAIRequest, ChatWithoutTemplateIsAClear400) {
  const api_error e = error_of(R"({"messages":[{"role":"user","content":"hi"}]})", api_kind::chat);
  EXPECT_EQ(e.status, 400);
  EXPECT_EQ(e.code, "chat_template_missing");
  EXPECT_NE(std::string(e.what()).find("no chat template"), std::string::npos);
}

TEST_F(OpenAIRequest, ChatRendersJoinsPartsAndDefaultsToTheRestOfTheContext) {
  ctx_.render_chat = &renderer_;
  const generation_request r = parse_chat_request(
      parse_json_object(
          R"({"messages":[{"role":"user","content":[{"type":"text","text":"h"},{"type":"text","text":"i"}]}],
              "logprobs":true,"top_logprobs":2})"),
      ctx_);
  const std::string prompt = "user:hi\nassistant:";
  EXPECT_EQ(r.prompt_ids.size(), prompt.size());
  EXPECT_EQ(r.params.max_tokens, 64 - static_cast<int32_t>(prompt.size()));
  EXPECT_TRUE(r.logprobs);
  EXPECT_EQ(r.params.logprobs, 2);
  EXPECT_EQ(error_of(R"({"messages":[]})", api_kind::chat).status, 400);
  EXPECT_EQ(error_of(R"({"messages":[{"content":"x"}]})", api_kind::chat).status, 400);
  EXPECT_EQ(
      error_of(R"({"messages":[{"role":"user","content":"x"}],"top_logprobs":2})", api_kind::chat).status,
      400);
  EXPECT_EQ(
      error_of(R"({"messages":[{"role":"user","content":[{"type":"image_url"}]}]})", api_kind::chat).status,
      400);
}

TEST_F(OpenAIRequest, RequestChatTemplateRefusedUnlessTheOperatorAllowsIt) {
  ctx_.render_chat = &renderer_;
  const char* body =
      R"({"messages":[{"role":"user","content":"hi"}],"chat_template":"{{ messages[0].content }}!"})";
  const api_error e = error_of(body, api_kind::chat);
  EXPECT_EQ(e.status, 400);
  EXPECT_EQ(e.code, "chat_template_not_allowed");
  EXPECT_EQ(e.param, "chat_template");
  // Allowed: the renderer receives the template with the other options.
  std::string seen;
  prompt_renderer spy = [&](const json&, const json& options) {
    seen = options.value("chat_template", std::string());
    return std::string("ok");
  };
  ctx_.render_chat = &spy;
  ctx_.allow_request_chat_template = true;
  const generation_request r = parse_chat_request(parse_json_object(body), ctx_);
  EXPECT_EQ(seen, "{{ messages[0].content }}!");
  EXPECT_EQ(r.prompt_ids.size(), 2u);
  EXPECT_EQ(
      error_of(R"({"messages":[{"role":"user","content":"hi"}],"chat_template":5})", api_kind::chat).status,
      400);
}

TEST_F(OpenAIRequest, WebSocketNeedsExactlyOnePromptKind) {
  EXPECT_EQ(
      error_of(R"({"type":"generate","id":"a","prompt":"x","prompt_ids":[1]})", api_kind::websocket).status,
      400);
  EXPECT_EQ(error_of(R"({"type":"generate","id":"a"})", api_kind::websocket).status, 400);
  EXPECT_EQ(error_of(R"({"type":"generate","id":"a","prompt_ids":[1,2],"max_tokens":4})", api_kind::websocket)
                .status,
            0);
}

TEST(Auth, ConstantTimeEqualAndKeys) {
  EXPECT_TRUE(constant_time_equal("abc", "abc"));
  EXPECT_FALSE(constant_time_equal("abc", "abd"));
  EXPECT_FALSE(constant_time_equal("abc", "abcd"));
  EXPECT_FALSE(constant_time_equal("", "a"));
  authenticator a({"k1", "k2"}, {"/health"});
  EXPECT_TRUE(a.enabled());
  EXPECT_TRUE(a.key_valid("k2"));
  EXPECT_FALSE(a.key_valid("k3"));
  EXPECT_FALSE(a.key_valid(""));
  EXPECT_TRUE(a.is_public("/health"));
  EXPECT_FALSE(a.is_public("/metrics"));
  EXPECT_EQ(authenticator::bearer_token("Bearer  abc "), "abc");
  EXPECT_EQ(authenticator::bearer_token("Basic abc"), "");
  EXPECT_EQ(authenticator::query_param("/v1/ws?x=1&api_key=a%2Bb", "api_key"), "a+b");
  EXPECT_EQ(authenticator::query_param("/v1/ws", "api_key"), "");
}

TEST(Response, CompletionBodyAndStreamChunks) {
  generation_request g;
  g.kind = api_kind::chat;
  g.stream = true;
  g.include_usage = true;
  response_builder b(g, "chatcmpl-x", "m", nullptr);
  request_event ev;
  ev.id = "chatcmpl-x";
  sequence_delta d;
  d.text = "hi";
  d.token_ids = {1, 2};
  d.finish_reason = "length";
  ev.deltas.push_back(d);
  ev.finished = true;
  ev.usage = {3, 2, 0};
  std::string out;
  b.stream_event(ev, out);
  b.stream_end(ev.usage, out);
  EXPECT_NE(out.find(R"("delta":{"role":"assistant","content":"hi"})"), std::string::npos) << out;
  EXPECT_NE(out.find(R"("finish_reason":"length")"), std::string::npos) << out;
  EXPECT_NE(out.find(R"("choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5})"),
            std::string::npos)
      << out;
  EXPECT_EQ(out.substr(out.size() - 14), "data: [DONE]\n\n");

  g.kind = api_kind::completion;
  g.stream = false;
  response_builder c(g, "cmpl-x", "m", nullptr);
  c.accumulate(ev);
  const json body = c.body(ev.usage);
  EXPECT_EQ(body["object"], "text_completion");
  EXPECT_EQ(body["choices"][0]["text"], "hi");
  EXPECT_EQ(body["usage"]["total_tokens"], 5);
  EXPECT_EQ(make_request_id("cmpl-").size(), 5u + 32u);
}

}  // namespace
}  // namespace troupe::gateway
