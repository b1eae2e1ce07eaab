"""The released checkpoints' configs (values as published in their config.json), for meta-device key coverage.

Only the fields that decide shapes and structure are listed; everything else
takes the config class's default, as it does when the released file is read.
"""

QWEN2_AUDIO_7B_INSTRUCT = dict(
    model_type="qwen2_audio",
    audio_token_index=151646,
    audio_config=dict(model_type="qwen2_audio_encoder", d_model=1280, encoder_layers=32, encoder_attention_heads=20,
                      encoder_ffn_dim=5120, num_mel_bins=128, max_source_positions=1500),
    text_config=dict(model_type="qwen2", vocab_size=156032, hidden_size=4096, intermediate_size=11008,
                     num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32, rms_norm_eps=1e-5,
                     rope_theta=10000.0, max_position_embeddings=8192, use_sliding_window=False),
)

_VOXTRAL_AUDIO = dict(model_type="voxtral_encoder", hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                      num_attention_heads=20, num_mel_bins=128, max_source_positions=1500)
VOXTRAL_MINI_3B = dict(
    model_type="voxtral", audio_token_id=24, projector_hidden_act="gelu", audio_config=_VOXTRAL_AUDIO,
    text_config=dict(model_type="llama", vocab_size=131072, hidden_size=3072, intermediate_size=8192,
                     num_hidden_layers=30, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                     rope_theta=100000000.0, rms_norm_eps=1e-5, max_position_embeddings=131072),
)
VOXTRAL_SMALL_24B = dict(
    model_type="voxtral", audio_token_id=24, projector_hidden_act="gelu", audio_config=_VOXTRAL_AUDIO,
    text_config=dict(model_type="llama", vocab_size=131072, hidden_size=5120, intermediate_size=32768,
                     num_hidden_layers=40, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                     rope_theta=100000000.0, rms_norm_eps=1e-5, max_position_embeddings=131072),
)

AUDIO_FLAMINGO_3 = dict(
    model_type="audioflamingo3", audio_token_id=151669, projector_hidden_act="gelu", projector_bias=True,
    audio_config=dict(model_type="audioflamingo3_encoder", hidden_size=1280, num_hidden_layers=32,
                      num_attention_heads=20, intermediate_size=5120, num_mel_bins=128, max_source_positions=1500),
    text_config=dict(model_type="qwen2", vocab_size=151672, hidden_size=3584, intermediate_size=18944,
                     num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4, rms_norm_eps=1e-6,
                     rope_theta=1000000.0, max_position_embeddings=32768),
)

# nvidia/music-flamingo-2601-hf: Audio Flamingo 3's encoder and Qwen2.5-7B LM (the shapes above), plus the rotary
# time fields at MusicFlamingoConfig's defaults (rope_theta 1200, partial_rotary_factor 0.2, audio_frame_step 0.01,
# sound bos/eos 151670/151671). The earlier nvidia/music-flamingo-hf says model_type "audioflamingo3" (AF3's family).
MUSIC_FLAMINGO = dict(AUDIO_FLAMINGO_3, model_type="musicflamingo", audio_bos_token_id=151670,
                      audio_eos_token_id=151671, audio_frame_step=0.01,
                      rope_parameters=dict(rope_type="default", rope_theta=1200.0, partial_rotary_factor=0.2))

QWEN2_5_OMNI_7B = dict(  # the full model: thinker + talker + token2wav (only the thinker is read)
    model_type="qwen2_5_omni",
    thinker_config=dict(
        model_type="qwen2_5_omni_thinker", audio_token_index=151646, image_token_index=151655,
        video_token_index=151656, vision_start_token_id=151652, position_id_per_seconds=25, seconds_per_chunk=2,
        audio_start_token_id=151647, audio_end_token_id=151648, tie_word_embeddings=False,
        audio_config=dict(model_type="qwen2_5_omni_audio_encoder", d_model=1280, encoder_layers=32,
                          encoder_attention_heads=20, encoder_ffn_dim=5120, num_mel_bins=128,
                          max_source_positions=1500, n_window=100, output_dim=3584),
        text_config=dict(model_type="qwen2_5_omni_text", vocab_size=152064, hidden_size=3584,
                         intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                         rms_norm_eps=1e-6, rope_theta=1000000.0, max_position_embeddings=32768,
                         rope_scaling=dict(type="default", mrope_section=[16, 24, 24])),
        vision_config=dict(model_type="qwen2_5_omni_vision_encoder", depth=32, hidden_size=1280, num_heads=16,
                           intermediate_size=3420, out_hidden_size=3584),
    ),
)

# Qwen/Qwen3-Omni-30B-A3B-Instruct config.json, thinker part (the talker and code2wav are never built here).
QWEN3_OMNI_30B_A3B_INSTRUCT = dict(
    model_type="qwen3_omni_moe",
    enable_audio_output=False,
    thinker_config=dict(
        model_type="qwen3_omni_moe_thinker", audio_token_id=151675, image_token_id=151655, video_token_id=151656,
        audio_start_token_id=151669, vision_start_token_id=151652, position_id_per_seconds=13, user_token_id=872,
        tie_word_embeddings=False,
        audio_config=dict(model_type="qwen3_omni_moe_audio_encoder", d_model=1280, encoder_layers=32,
                          encoder_attention_heads=20, encoder_ffn_dim=5120, num_mel_bins=128, max_source_positions=1500,
                          n_window=50, n_window_infer=800, conv_chunksize=500, downsample_hidden_size=480,
                          output_dim=2048),
        text_config=dict(model_type="qwen3_omni_moe_text", vocab_size=152064, hidden_size=2048, intermediate_size=768,
                         moe_intermediate_size=768, num_hidden_layers=48, num_attention_heads=32, num_key_value_heads=4,
                         head_dim=128, num_experts=128, num_experts_per_tok=8, norm_topk_prob=True,
                         decoder_sparse_step=1, mlp_only_layers=[], rms_norm_eps=1e-6, max_position_embeddings=65536,
                         attention_bias=False, rope_parameters=dict(rope_type="default", rope_theta=1000000,
                         mrope_section=[24, 20, 20], interleaved=True, mrope_interleaved=True)),
        vision_config=dict(model_type="qwen3_omni_moe_vision_encoder", depth=27, hidden_size=1152, num_heads=16,
                           intermediate_size=4304, out_hidden_size=2048, patch_size=16, spatial_merge_size=2,
                           temporal_patch_size=2, num_position_embeddings=2304, deepstack_visual_indexes=[8, 16, 24]),
    ),
)

# Voxtral-Mini-4B-Realtime-2602 (transformers' VoxtralRealtimeConfig defaults were written from this checkpoint):
# causal encoder 32 x 1280 (32 heads x 64, window 750 frames), Ministral-3 decoder 26 x 3072 (GQA 32/8 x 128,
# window 8192), embeddings tied to the head.
VOXTRAL_MINI_4B_REALTIME = dict(
    model_type="voxtral_realtime", audio_length_per_tok=8, default_num_delay_tokens=6, downsample_factor=4,
    projector_hidden_act="gelu", tie_word_embeddings=True,
    audio_config=dict(model_type="voxtral_realtime_encoder", hidden_size=1280, intermediate_size=5120,
                      num_hidden_layers=32, num_attention_heads=32, head_dim=64, num_mel_bins=128,
                      sliding_window=750, rms_norm_eps=1e-5, max_position_embeddings=1500),
    text_config=dict(model_type="voxtral_realtime_text", vocab_size=131072, hidden_size=3072, intermediate_size=9216,
                     num_hidden_layers=26, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                     rms_norm_eps=1e-5, rope_theta=1000000.0, sliding_window=8192, max_position_embeddings=131072,
                     tie_word_embeddings=True),
)

WHISPER_LARGE_V3 = dict(d_model=1280, encoder_layers=32, encoder_attention_heads=20, encoder_ffn_dim=5120,
                        decoder_layers=32, decoder_attention_heads=20, decoder_ffn_dim=5120, num_mel_bins=128,
                        vocab_size=51866, max_source_positions=1500, max_target_positions=448)
WHISPER_SMALL = dict(d_model=768, encoder_layers=12, encoder_attention_heads=12, encoder_ffn_dim=3072,
                     decoder_layers=12, decoder_attention_heads=12, decoder_ffn_dim=3072, num_mel_bins=80,
                     vocab_size=51865, max_source_positions=1500, max_target_positions=448)
LLAMA_31_8B = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                   num_attention_heads=32, num_key_value_heads=8, rms_norm_eps=1e-5, max_position_embeddings=131072,
                   rope_parameters=dict(rope_type="llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0,
                                        high_freq_factor=4.0, original_max_position_embeddings=8192))
LLAMA_3_8B = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                  num_attention_heads=32, num_key_value_heads=8, rms_norm_eps=1e-5, max_position_embeddings=8192,
                  rope_parameters=dict(rope_type="default", rope_theta=500000.0))
DESTA25 = dict(model_type="desta25", prompt_size=64, qformer_num_hidden_layers=6, connector_mode="qformer_1",
               encoder_model_id="openai/whisper-large-v3", llm_model_id="DeSTA-ntu/Llama-3.1-8B-Instruct")
DESTA2 = dict(model_type="DestaModel", prompt_size=64, whisper_model_id="openai/whisper-small",
              llama_model_id="meta-llama/Meta-Llama-3-8B-Instruct")

QWEN_AUDIO_CHAT = dict(
    model_type="qwen", hidden_size=4096, num_attention_heads=32, num_hidden_layers=32, kv_channels=128,
    intermediate_size=22016, seq_length=2048, max_position_embeddings=8192, rotary_emb_base=10000, rotary_pct=1.0,
    layer_norm_epsilon=1e-6, vocab_size=155947, no_bias=True, use_dynamic_ntk=True, use_logn_attn=True,
    tie_word_embeddings=False,
    audio=dict(n_mels=80, n_ctx=1500, n_state=1280, n_head=20, n_layer=32, output_dim=4096, avg_pool=True,
               add_audio_bos_eos_token=True, audio_start_id=155163),
)


def qwen_audio_keys(c: dict) -> dict:
    """The released Qwen-Audio checkpoint's keys and shapes, as its remote code names its modules
    (there is no original to build: it does not load on transformers 5)."""
    d, a, V = c["hidden_size"], c["audio"], c["vocab_size"]
    ff, w = c["intermediate_size"] // 2, a["n_state"]
    keys = {"transformer.wte.weight": (V, d), "transformer.ln_f.weight": (d,), "lm_head.weight": (V, d)}
    for i in range(c["num_hidden_layers"]):
        h = f"transformer.h.{i}."
        keys.update({h + "ln_1.weight": (d,), h + "ln_2.weight": (d,), h + "attn.c_attn.weight": (3 * d, d),
                     h + "attn.c_attn.bias": (3 * d,), h + "attn.c_proj.weight": (d, d), h + "mlp.w1.weight": (ff, d),
                     h + "mlp.w2.weight": (ff, d), h + "mlp.c_proj.weight": (d, ff)})
    e = "transformer.audio."
    keys.update({e + "conv1.weight": (w, a["n_mels"], 3), e + "conv1.bias": (w,), e + "conv2.weight": (w, w, 3),
                 e + "conv2.bias": (w,), e + "positional_embedding": (a["n_ctx"], w), e + "ln_post.weight": (w,),
                 e + "ln_post.bias": (w,), e + "proj.weight": (a["output_dim"], w), e + "proj.bias": (a["output_dim"],),
                 e + "audio_bos_eos_token.weight": (2, a["output_dim"])})
    for i in range(a["n_layer"]):
        b = f"{e}blocks.{i}."
        for name in ("query", "value", "out"):
            keys.update({b + f"attn.{name}.weight": (w, w), b + f"attn.{name}.bias": (w,)})
        keys.update({b + "attn.key.weight": (w, w), b + "attn_ln.weight": (w,), b + "attn_ln.bias": (w,),
                     b + "mlp_ln.weight": (w,), b + "mlp_ln.bias": (w,), b + "mlp.0.weight": (4 * w, w),
                     b + "mlp.0.bias": (4 * w,), b + "mlp.2.weight": (w, 4 * w), b + "mlp.2.bias": (w,)})
    return keys

# Granite Speech 3.3 (ibm-granite/granite-speech-3.3-2b, -8b): the conformer and Q-Former are shared, the LMs
# are granite-3.3-2b/8b-instruct; the LoRA adapter (adapter_config.json) is rank 64, alpha 32 on q_proj/v_proj.
_GRANITE_ENCODER = dict(model_type="granite_speech_encoder", input_dim=160, num_layers=16, hidden_dim=1024,
                        feedforward_mult=4, num_heads=8, dim_head=128, output_dim=256, context_size=200,
                        max_pos_emb=512, conv_kernel_size=15, conv_expansion_factor=2)
_GRANITE_QFORMER = dict(model_type="blip_2_qformer", hidden_size=1024, num_hidden_layers=2, num_attention_heads=16,
                        intermediate_size=4096, encoder_hidden_size=1024, cross_attention_frequency=1,
                        layer_norm_eps=1e-12, use_qformer_text_input=False)
GRANITE_SPEECH_LORA = dict(peft_type="LORA", r=64, lora_alpha=32, target_modules=["q_proj", "v_proj"], bias="none")


def _granite_speech(hidden: int, intermediate: int, attention_multiplier: float, logits_scaling: float) -> dict:
    return dict(
        model_type="granite_speech", audio_token_index=49159, downsample_rate=5, window_size=15,
        has_lora_adapter=True, encoder_config=_GRANITE_ENCODER, projector_config=_GRANITE_QFORMER,
        text_config=dict(model_type="granite", vocab_size=49160, hidden_size=hidden, intermediate_size=intermediate,
                         num_hidden_layers=40, num_attention_heads=32, num_key_value_heads=8, rms_norm_eps=1e-5,
                         rope_theta=10000000.0, max_position_embeddings=131072, embedding_multiplier=12.0,
                         residual_multiplier=0.22, attention_multiplier=attention_multiplier,
                         logits_scaling=logits_scaling, tie_word_embeddings=True),
    )


GRANITE_SPEECH_3_3_2B = _granite_speech(2048, 8192, 0.015625, 8.0)
GRANITE_SPEECH_3_3_8B = _granite_speech(4096, 12800, 0.0078125, 16.0)
