# bash completion for `lwm`, generated from the CLI by scripts/make_completions.py: do not edit.

_lwm_words() {
    local IFS=$' \t\n'
    COMPREPLY+=($(compgen -W "$1" -- "$cur"))
}

_lwm_files() {
    local IFS=$'\n'
    compopt -o filenames 2>/dev/null
    COMPREPLY+=($(compgen -f -- "$cur"))
}

_lwm_complete() {
    COMPREPLY=()
    # Split the line ourselves, on whitespace only: COMP_WORDS also splits at ':' and '='.
    local line="${COMP_LINE:0:COMP_POINT}" cur="" w path="" pending=""
    local -a words
    read -ra words <<< "$line"
    if [[ -n "$line" && "$line" != *[[:space:]] ]]; then
        cur="${words[${#words[@]}-1]}"
        unset "words[${#words[@]}-1]"
    fi
    for w in "${words[@]:1}"; do
        if [[ -n "$pending" ]]; then pending=""; continue; fi
        case "$path $w" in
            ' chat') path='chat' ;;
            ' gen') path='gen' ;;
            ' train') path='train' ;;
            ' convert') path='convert' ;;
            ' needle') path='needle' ;;
            ' vqgan') path='vqgan' ;;
            ' world') path='world' ;;
            ' models') path='models' ;;
            'gen image') path='gen image' ;;
            'gen video') path='gen video' ;;
            'convert jax2hf') path='convert jax2hf' ;;
            'convert hf2jax') path='convert hf2jax' ;;
            'convert quantize') path='convert quantize' ;;
            'convert vqgan') path='convert vqgan' ;;
            'needle make') path='needle make' ;;
            'needle eval') path='needle eval' ;;
            'needle plot') path='needle plot' ;;
            'vqgan encode') path='vqgan encode' ;;
            'vqgan decode') path='vqgan decode' ;;
            'vqgan train') path='vqgan train' ;;
            'world make') path='world make' ;;
            'world show') path='world show' ;;
            *) case " $path $w " in
                   '  --completion '|' chat --image '|' chat --video '|' chat --max-frames '|' chat --model '|' chat -m '|' chat --vqgan '|' chat --tokenizer '|' chat --card '|' chat --preset '|' chat --set '|' chat --mesh '|' chat --dtype '|' chat --quantize '|' chat --max-new-tokens '|' chat -n '|' chat --temperature '|' chat -t '|' chat --top-k '|' chat --top-p '|' chat --seed '|' chat --system '|' chat --device-memory '|' gen image --output '|' gen image -o '|' gen image --model '|' gen image -m '|' gen image --vqgan '|' gen image --tokenizer '|' gen image --card '|' gen image --preset '|' gen image --set '|' gen image --mesh '|' gen image --dtype '|' gen image --quantize '|' gen image --cfg-scale '|' gen image --top-k '|' gen image --temperature '|' gen image -t '|' gen image --beams '|' gen image --seed '|' gen image --batch-size '|' gen video --output '|' gen video -o '|' gen video --model '|' gen video -m '|' gen video --vqgan '|' gen video --tokenizer '|' gen video --card '|' gen video --preset '|' gen video --set '|' gen video --mesh '|' gen video --dtype '|' gen video --quantize '|' gen video --n-frames '|' gen video --cfg-scale '|' gen video --top-k '|' gen video --temperature '|' gen video -t '|' gen video --beams '|' gen video --seed '|' gen video --batch-size '|' gen video --fps '|' train --model '|' train -m '|' train --set '|' train --mesh '|' train --device-memory '|' train --run-dir '|' train --coordinator '|' train --num-processes '|' train --process-id '|' convert jax2hf --output '|' convert jax2hf -o '|' convert jax2hf --model '|' convert jax2hf -m '|' convert jax2hf --tokenizer '|' convert jax2hf --card '|' convert jax2hf --preset '|' convert jax2hf --set '|' convert jax2hf --dtype '|' convert jax2hf --max-shard-size '|' convert jax2hf --tolerance '|' convert hf2jax --output '|' convert hf2jax -o '|' convert hf2jax --model '|' convert hf2jax -m '|' convert hf2jax --format '|' convert quantize --output '|' convert quantize -o '|' convert quantize --model '|' convert quantize -m '|' convert quantize --tokenizer '|' convert quantize --card '|' convert quantize --preset '|' convert quantize --set '|' convert quantize --to '|' convert vqgan --output '|' convert vqgan -o '|' convert vqgan --model '|' convert vqgan -m '|' convert vqgan --set '|' needle make --output '|' needle make -o '|' needle make --model '|' needle make -m '|' needle make --tokenizer '|' needle make --task '|' needle make --ctx '|' needle make --depths '|' needle make --depth-spacing '|' needle make --rounds '|' needle make --haystack '|' needle make --template '|' needle make --needles '|' needle make --retrieve '|' needle make --max-new-tokens '|' needle make -n '|' needle make --seed '|' needle eval --output '|' needle eval -o '|' needle eval --model '|' needle eval -m '|' needle eval --data '|' needle eval --hf '|' needle eval --tokenizer '|' needle eval --card '|' needle eval --preset '|' needle eval --set '|' needle eval --mesh '|' needle eval --dtype '|' needle eval --quantize '|' needle eval --batch-tokens '|' needle eval --task '|' needle eval --ctx '|' needle eval --depths '|' needle eval --depth-spacing '|' needle eval --rounds '|' needle eval --haystack '|' needle eval --template '|' needle eval --needles '|' needle eval --retrieve '|' needle eval --max-new-tokens '|' needle eval -n '|' needle eval --seed '|' needle eval --threshold '|' needle eval --device-memory '|' needle plot --compare '|' needle plot --output '|' needle plot -o '|' needle plot --threshold '|' vqgan encode --output '|' vqgan encode -o '|' vqgan encode --model '|' vqgan encode -m '|' vqgan encode --manifest '|' vqgan encode --max-frames '|' vqgan encode --fields '|' vqgan encode --tasks '|' vqgan encode --set '|' vqgan encode --mesh '|' vqgan encode --batch-size '|' vqgan decode --output '|' vqgan decode -o '|' vqgan decode --model '|' vqgan decode -m '|' vqgan decode --key '|' vqgan decode --line '|' vqgan decode --fps '|' vqgan decode --set '|' vqgan decode --mesh '|' vqgan decode --batch-size '|' vqgan train --output '|' vqgan train -o '|' vqgan train --card '|' vqgan train --preset '|' vqgan train --set '|' vqgan train --steps '|' vqgan train --batch-size '|' vqgan train --seed '|' world make --output '|' world make -o '|' world make --clips '|' world make --kinds '|' world make --frames '|' world make --size '|' world make --layout '|' world make --fps '|' world make --seed '|' world show --output '|' world show -o '|' world show --frames '|' world show --size '|' world show --layout '|' world show --fps '|' world show --seed ') pending="$w" ;;
               esac ;;
        esac
    done
    if [[ -n "$pending" ]]; then
        case "$path $pending" in
            ' --completion') _lwm_words 'bash zsh fish' ;;
            'chat --image') _lwm_files ;;
            'chat --video') _lwm_files ;;
            'chat --max-frames') : ;;
            'chat --model'|'chat -m') _lwm_words 'lwm-demo-vision lwm-demo-text random:tiny random:debug random:200m random:1b random:3b random:7b random:13b random:30b random:65b random:LWM-Text-128K random:LWM-Text-256K random:LWM-Text-512K random:LWM-Text-1M random:LWM-Text-Chat-128K random:LWM-Text-Chat-256K random:LWM-Text-Chat-512K random:LWM-Text-Chat-1M random:LWM-Chat-32K random:LWM-Chat-128K random:LWM-Chat-1M'; _lwm_files ;;
            'chat --vqgan') _lwm_files ;;
            'chat --tokenizer') _lwm_files ;;
            'chat --card'|'chat --preset') _lwm_words 'tiny debug 200m 1b 3b 7b 13b 30b 65b LWM-Text-128K LWM-Text-256K LWM-Text-512K LWM-Text-1M LWM-Text-Chat-128K LWM-Text-Chat-256K LWM-Text-Chat-512K LWM-Text-Chat-1M LWM-Chat-32K LWM-Chat-128K LWM-Chat-1M' ;;
            'chat --set') : ;;
            'chat --mesh') : ;;
            'chat --dtype') _lwm_words 'float32 bfloat16 float16' ;;
            'chat --quantize') _lwm_words 'none int8 int4' ;;
            'chat --max-new-tokens'|'chat -n') : ;;
            'chat --temperature'|'chat -t') : ;;
            'chat --top-k') : ;;
            'chat --top-p') : ;;
            'chat --seed') : ;;
            'chat --system') : ;;
            'chat --device-memory') : ;;
            'gen image --output'|'gen image -o') _lwm_files ;;
            'gen image --model'|'gen image -m') _lwm_words 'lwm-demo-vision lwm-demo-text random:tiny random:debug random:200m random:1b random:3b random:7b random:13b random:30b random:65b random:LWM-Text-128K random:LWM-Text-256K random:LWM-Text-512K random:LWM-Text-1M random:LWM-Text-Chat-128K random:LWM-Text-Chat-256K random:LWM-Text-Chat-512K random:LWM-Text-Chat-1M random:LWM-Chat-32K random:LWM-Chat-128K random:LWM-Chat-1M'; _lwm_files ;;
            'gen image --vqgan') _lwm_files ;;
            'gen image --tokenizer') _lwm_files ;;
            'gen image --card'|'gen image --preset') _lwm_words 'tiny debug 200m 1b 3b 7b 13b 30b 65b LWM-Text-128K LWM-Text-256K LWM-Text-512K LWM-Text-1M LWM-Text-Chat-128K LWM-Text-Chat-256K LWM-Text-Chat-512K LWM-Text-Chat-1M LWM-Chat-32K LWM-Chat-128K LWM-Chat-1M' ;;
            'gen image --set') : ;;
            'gen image --mesh') : ;;
            'gen image --dtype') _lwm_words 'float32 bfloat16 float16' ;;
            'gen image --quantize') _lwm_words 'none int8 int4' ;;
            'gen image --cfg-scale') : ;;
            'gen image --top-k') : ;;
            'gen image --temperature'|'gen image -t') : ;;
            'gen image --beams') : ;;
            'gen image --seed') : ;;
            'gen image --batch-size') : ;;
            'gen video --output'|'gen video -o') _lwm_files ;;
            'gen video --model'|'gen video -m') _lwm_words 'lwm-demo-vision lwm-demo-text random:tiny random:debug random:200m random:1b random:3b random:7b random:13b random:30b random:65b random:LWM-Text-128K random:LWM-Text-256K random:LWM-Text-512K random:LWM-Text-1M random:LWM-Text-Chat-128K random:LWM-Text-Chat-256K random:LWM-Text-Chat-512K random:LWM-Text-Chat-1M random:LWM-Chat-32K random:LWM-Chat-128K random:LWM-Chat-1M'; _lwm_files ;;
            'gen video --vqgan') _lwm_files ;;
            'gen video --tokenizer') _lwm_files ;;
            'gen video --card'|'gen video --preset') _lwm_words 'tiny debug 200m 1b 3b 7b 13b 30b 65b LWM-Text-128K LWM-Text-256K LWM-Text-512K LWM-Text-1M LWM-Text-Chat-128K LWM-Text-Chat-256K LWM-Text-Chat-512K LWM-Text-Chat-1M LWM-Chat-32K LWM-Chat-128K LWM-Chat-1M' ;;
            'gen video --set') : ;;
            'gen video --mesh') : ;;
            'gen video --dtype') _lwm_words 'float32 bfloat16 float16' ;;
            'gen video --quantize') _lwm_words 'none int8 int4' ;;
            'gen video --n-frames') : ;;
            'gen video --cfg-scale') : ;;
            'gen video --top-k') : ;;
            'gen video --temperature'|'gen video -t') : ;;
            'gen video --beams') : ;;
            'gen video --seed') : ;;
            'gen video --batch-size') : ;;
            'gen video --fps') : ;;
            'train --model'|'train -m') _lwm_words 'lwm-demo-vision lwm-demo-text random:tiny random:debug random:200m random:1b random:3b random:7b random:13b random:30b random:65b random:LWM-Text-128K random:LWM-Text-256K random:LWM-Text-512K random:LWM-Text-1M random:LWM-Text-Chat-128K random:LWM-Text-Chat-256K random:LWM-Text-Chat-512K random:LWM-Text-Chat-1M random:LWM-Chat-32K random:LWM-Chat-128K random:LWM-Chat-1M'; _lwm_files ;;
            'train --set') : ;;
            'train --mesh') : ;;
            'train --device-memory') : ;;
            'train --run-dir') _lwm_files ;;
            'train --coordinator') : ;;
            'train --num-processes') : ;;
            'train --process-id') : ;;
            'convert jax2hf --output'|'convert jax2hf -o') _lwm_files ;;
            'convert jax2hf --model'|'convert jax2hf -m') _lwm_words 'lwm-demo-vision lwm-demo-text random:tiny random:debug random:200m random:1b random:3b random:7b random:13b random:30b random:65b random:LWM-Text-128K random:LWM-Text-256K random:LWM-Text-512K random:LWM-Text-1M random:LWM-Text-Chat-128K random:LWM-Text-Chat-256K random:LWM-Text-Chat-512K random:LWM-Text-Chat-1M random:LWM-Chat-32K random:LWM-Chat-128K random:LWM-Chat-1M'; _lwm_files ;;
            'convert jax2hf --tokenizer') _lwm_files ;;
            'convert jax2hf --card'|'convert jax2hf --preset') _lwm_words 'tiny debug 200m 1b 3b 7b 13b 30b 65b LWM-Text-128K LWM-Text-256K LWM-Text-512K LWM-Text-1M LWM-Text-Chat-128K LWM-Text-Chat-256K LWM-Text-Chat-512K LWM-Text-Chat-1M LWM-Chat-32K LWM-Chat-128K LWM-Chat-1M' ;;
            'convert jax2hf --set') : ;;
            'convert jax2hf --dtype') _lwm_words 'float32 bfloat16 float16' ;;
            'convert jax2hf --max-shard-size') : ;;
            'convert jax2hf --tolerance') : ;;
            'convert hf2jax --output'|'convert hf2jax -o') _lwm_files ;;
            'convert hf2jax --model'|'convert hf2jax -m') _lwm_files ;;
            'convert hf2jax --format') _lwm_words 'params params-unscanned native' ;;
            'convert quantize --output'|'convert quantize -o') _lwm_files ;;
            'convert quantize --model'|'convert quantize -m') _lwm_words 'lwm-demo-vision lwm-demo-text random:tiny random:debug random:200m random:1b random:3b random:7b random:13b random:30b random:65b random:LWM-Text-128K random:LWM-Text-256K random:LWM-Text-512K random:LWM-Text-1M random:LWM-Text-Chat-128K random:LWM-Text-Chat-256K random:LWM-Text-Chat-512K random:LWM-Text-Chat-1M random:LWM-Chat-32K random:LWM-Chat-128K random:LWM-Chat-1M'; _lwm_files ;;
            'convert quantize --tokenizer') _lwm_files ;;
            'convert quantize --card'|'convert quantize --preset') _lwm_words 'tiny debug 200m 1b 3b 7b 13b 30b 65b LWM-Text-128K LWM-Text-256K LWM-Text-512K LWM-Text-1M LWM-Text-Chat-128K LWM-Text-Chat-256K LWM-Text-Chat-512K LWM-Text-Chat-1M LWM-Chat-32K LWM-Chat-128K LWM-Chat-1M' ;;
            'convert quantize --set') : ;;
            'convert quantize --to') _lwm_words 'int8 int4' ;;
            'convert vqgan --output'|'convert vqgan -o') _lwm_files ;;
            'convert vqgan --model'|'convert vqgan -m') _lwm_files ;;
            'convert vqgan --set') : ;;
            'needle make --output'|'needle make -o') _lwm_files ;;
            'needle make --model'|'needle make -m') _lwm_words 'lwm-demo-vision lwm-demo-text random:tiny random:debug random:200m random:1b random:3b random:7b random:13b random:30b random:65b random:LWM-Text-128K random:LWM-Text-256K random:LWM-Text-512K random:LWM-Text-1M random:LWM-Text-Chat-128K random:LWM-Text-Chat-256K random:LWM-Text-Chat-512K random:LWM-Text-Chat-1M random:LWM-Chat-32K random:LWM-Chat-128K random:LWM-Chat-1M'; _lwm_files ;;
            'needle make --tokenizer') _lwm_files ;;
            'needle make --task') : ;;
            'needle make --ctx') : ;;
            'needle make --depths') : ;;
            'needle make --depth-spacing') : ;;
            'needle make --rounds') : ;;
            'needle make --haystack') : ;;
            'needle make --template') : ;;
            'needle make --needles') : ;;
            'needle make --retrieve') : ;;
            'needle make --max-new-tokens'|'needle make -n') : ;;
            'needle make --seed') : ;;
            'needle eval --output'|'needle eval -o') _lwm_files ;;
            'needle eval --model'|'needle eval -m') _lwm_words 'lwm-demo-vision lwm-demo-text random:tiny random:debug random:200m random:1b random:3b random:7b random:13b random:30b random:65b random:LWM-Text-128K random:LWM-Text-256K random:LWM-Text-512K random:LWM-Text-1M random:LWM-Text-Chat-128K random:LWM-Text-Chat-256K random:LWM-Text-Chat-512K random:LWM-Text-Chat-1M random:LWM-Chat-32K random:LWM-Chat-128K random:LWM-Chat-1M'; _lwm_files ;;
            'needle eval --data') _lwm_files ;;
            'needle eval --hf') _lwm_files ;;
            'needle eval --tokenizer') _lwm_files ;;
            'needle eval --card'|'needle eval --preset') _lwm_words 'tiny debug 200m 1b 3b 7b 13b 30b 65b LWM-Text-128K LWM-Text-256K LWM-Text-512K LWM-Text-1M LWM-Text-Chat-128K LWM-Text-Chat-256K LWM-Text-Chat-512K LWM-Text-Chat-1M LWM-Chat-32K LWM-Chat-128K LWM-Chat-1M' ;;
            'needle eval --set') : ;;
            'needle eval --mesh') : ;;
            'needle eval --dtype') _lwm_words 'float32 bfloat16 float16' ;;
            'needle eval --quantize') _lwm_words 'none int8 int4' ;;
            'needle eval --batch-tokens') : ;;
            'needle eval --task') : ;;
            'needle eval --ctx') : ;;
            'needle eval --depths') : ;;
            'needle eval --depth-spacing') : ;;
            'needle eval --rounds') : ;;
            'needle eval --haystack') : ;;
            'needle eval --template') : ;;
            'needle eval --needles') : ;;
            'needle eval --retrieve') : ;;
            'needle eval --max-new-tokens'|'needle eval -n') : ;;
            'needle eval --seed') : ;;
            'needle eval --threshold') : ;;
            'needle eval --device-memory') : ;;
            'needle plot --compare') _lwm_files ;;
            'needle plot --output'|'needle plot -o') _lwm_files ;;
            'needle plot --threshold') : ;;
            'vqgan encode --output'|'vqgan encode -o') _lwm_files ;;
            'vqgan encode --model'|'vqgan encode -m') _lwm_files ;;
            'vqgan encode --manifest') _lwm_files ;;
            'vqgan encode --max-frames') : ;;
            'vqgan encode --fields') : ;;
            'vqgan encode --tasks') : ;;
            'vqgan encode --set') : ;;
            'vqgan encode --mesh') : ;;
            'vqgan encode --batch-size') : ;;
            'vqgan decode --output'|'vqgan decode -o') _lwm_files ;;
            'vqgan decode --model'|'vqgan decode -m') _lwm_files ;;
            'vqgan decode --key') : ;;
            'vqgan decode --line') : ;;
            'vqgan decode --fps') : ;;
            'vqgan decode --set') : ;;
            'vqgan decode --mesh') : ;;
            'vqgan decode --batch-size') : ;;
            'vqgan train --output'|'vqgan train -o') _lwm_files ;;
            'vqgan train --card'|'vqgan train --preset') _lwm_words 'tiny world default' ;;
            'vqgan train --set') : ;;
            'vqgan train --steps') : ;;
            'vqgan train --batch-size') : ;;
            'vqgan train --seed') : ;;
            'world make --output'|'world make -o') _lwm_files ;;
            'world make --clips') : ;;
            'world make --kinds') : ;;
            'world make --frames') : ;;
            'world make --size') : ;;
            'world make --layout') : ;;
            'world make --fps') : ;;
            'world make --seed') : ;;
            'world show --output'|'world show -o') _lwm_files ;;
            'world show --frames') : ;;
            'world show --size') : ;;
            'world show --layout') : ;;
            'world show --fps') : ;;
            'world show --seed') : ;;
        esac
    elif [[ "$cur" == -* ]]; then
        local opts=""
        case "$path" in
        '') opts='--debug --version --completion --help -h' ;;
        'chat') opts='--image --video --max-frames --model -m --vqgan --tokenizer --card --preset --set --mesh --dtype --cpu-kernels --no-cpu-kernels --quantize --max-new-tokens -n --temperature -t --top-k --top-p --seed --system --raw --json --dry-run --compile --device-memory --help -h' ;;
        'gen') opts='--help -h' ;;
        'gen image') opts='--output -o --model -m --vqgan --tokenizer --card --preset --set --mesh --dtype --quantize --cfg-scale --top-k --temperature -t --beams --seed --batch-size --force --help -h' ;;
        'gen video') opts='--output -o --model -m --vqgan --tokenizer --card --preset --set --mesh --dtype --quantize --n-frames --cfg-scale --top-k --temperature -t --beams --seed --batch-size --fps --force --help -h' ;;
        'train') opts='--model -m --set --mesh --dry-run --compile --device-memory --run-dir --coordinator --num-processes --process-id --help -h' ;;
        'convert') opts='--help -h' ;;
        'convert jax2hf') opts='--output -o --model -m --tokenizer --card --preset --set --dtype --max-shard-size --text-only --force --verify --tolerance --help -h' ;;
        'convert hf2jax') opts='--output -o --model -m --format --force --help -h' ;;
        'convert quantize') opts='--output -o --model -m --tokenizer --card --preset --set --to --force --help -h' ;;
        'convert vqgan') opts='--output -o --model -m --set --force --help -h' ;;
        'needle') opts='--help -h' ;;
        'needle make') opts='--output -o --model -m --tokenizer --task --ctx --depths --depth-spacing --rounds --haystack --template --needles --retrieve --max-new-tokens -n --seed --force --help -h' ;;
        'needle eval') opts='--output -o --model -m --data --hf --tokenizer --card --preset --set --mesh --dtype --cpu-kernels --no-cpu-kernels --quantize --batch-tokens --task --ctx --depths --depth-spacing --rounds --haystack --template --needles --retrieve --max-new-tokens -n --seed --threshold --force --json --dry-run --compile --device-memory --help -h' ;;
        'needle plot') opts='--compare --output -o --force --threshold --help -h' ;;
        'vqgan') opts='--help -h' ;;
        'vqgan encode') opts='--output -o --model -m --manifest --max-frames --fields --chat --tasks --set --mesh --batch-size --force --help -h' ;;
        'vqgan decode') opts='--output -o --model -m --key --line --fps --sheet --set --mesh --batch-size --force --help -h' ;;
        'vqgan train') opts='--output -o --card --preset --set --steps --batch-size --seed --force --help -h' ;;
        'world') opts='--help -h' ;;
        'world make') opts='--output -o --clips --kinds --frames --size --layout --fps --seed --force --help -h' ;;
        'world show') opts='--output -o --frames --size --layout --fps --seed --force --help -h' ;;
        'models') opts='--help -h' ;;
        esac
        _lwm_words "$opts"
    else
        case "$path" in
        '') _lwm_words 'chat gen train convert needle vqgan world models' ;;
        'gen') _lwm_words 'image video' ;;
        'convert') _lwm_words 'jax2hf hf2jax quantize vqgan' ;;
        'convert vqgan') _lwm_files ;;
        'needle') _lwm_words 'make eval plot' ;;
        'vqgan') _lwm_words 'encode decode train' ;;
        'world') _lwm_words 'make show' ;;
        esac
    fi
    # Bash replaces only the text after the last ':' of the word (COMP_WORDBREAKS); trim the
    # completions to match, as bash-completion's __ltrim_colon_completions does.
    if [[ "$cur" == *:* && "$COMP_WORDBREAKS" == *:* ]]; then
        local prefix="${cur%"${cur##*:}"}" i
        for i in "${!COMPREPLY[@]}"; do COMPREPLY[$i]="${COMPREPLY[$i]#"$prefix"}"; done
    fi
}

complete -F _lwm_complete lwm
