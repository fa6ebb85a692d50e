#!/usr/bin/env escript
%% -*- erlang -*-
%%
%% The BEAM baseline of `portpool bench` (scenario 9): a pool of Erlang ports
%% to the same Python worker portpool runs (`python -m portpool bench_app.py`),
%% as an Elixir service would run it (NimblePool or a process per port).
%%
%% Usage: escript beam_pool.escript PYTHON APP WORKERS PARAMS_HEX
%%
%% Ports are opened with {packet, 4}: the emulator frames the 4-byte
%% big-endian length prefixes itself, as portpool's codec does. Each port has
%% an owner process that encodes requests (MessagePack, params pre-encoded:
%% PARAMS_HEX), decodes every reply in full (a small MessagePack decoder
%% below) and sends the result to its caller: the same work portpool's host
%% does. Callers check every result against the params.
%%
%% Commands, one per line on stdin; each answered by one line on stdout:
%%   seq MILLIS                       one caller, worker 1: p50/p99 latency
%%   mux CALLERS WARMUP_MS MILLIS     callers share the workers, many calls
%%                                    in flight per port (as portpool does)
%%   checkout CALLERS WARMUP_MS MILLIS  exclusive checkout: one call per
%%                                    worker at a time (NimblePool's model)
%%   quit
%% After start-up it prints `ready PID,PID,...` (the workers' OS pids).
%% Answers are JSON objects: calls and secs (the measurement window), p50_us
%% and p99_us (seq only), all_calls and cpu_s (every call of the command,
%% warm-up included, and this BEAM's CPU seconds meanwhile, for costs per
%% call), bad (results that were not the params).

-mode(compile).  % compiled, as a service's code is (escripts are interpreted by default)

main([Python, App, Workers, ParamsHex]) ->
    Params = binary:decode_hex(list_to_binary(ParamsHex)),
    {Expected, <<>>} = decode(Params),
    Owners = [start_worker(Python, App) || _ <- lists:seq(1, list_to_integer(Workers))],
    Pids = [integer_to_list(OsPid) || {_, OsPid} <- Owners],
    io:format("ready ~s~n", [lists:join(",", Pids)]),
    put(os_pids, [OsPid || {_, OsPid} <- Owners]),
    loop([Owner || {Owner, _} <- Owners], Params, Expected);
main(_) ->
    io:format(standard_error, "usage: beam_pool.escript PYTHON APP WORKERS PARAMS_HEX~n", []),
    halt(2).

loop(Owners, Params, Expected) ->
    case io:get_line("") of
        eof ->
            halt(0);
        Line ->
            case string:lexemes(string:trim(Line), " ") of
                ["seq", Ms] ->
                    report(sequential(hd(Owners), Params, Expected, list_to_integer(Ms)));
                ["mux", C, Warm, Ms] ->
                    report(concurrent(mux, Owners, Params, Expected,
                                      list_to_integer(C), list_to_integer(Warm), list_to_integer(Ms)));
                ["checkout", C, Warm, Ms] ->
                    report(concurrent(checkout, Owners, Params, Expected,
                                      list_to_integer(C), list_to_integer(Warm), list_to_integer(Ms)));
                ["quit"] ->
                    halt(0);
                Other ->
                    io:format(standard_error, "unknown command ~p~n", [Other]),
                    halt(2)
            end,
            loop(Owners, Params, Expected)
    end.

report({Calls, Secs, P50, P99, AllCalls, {Cpu, WorkerCpu}, Bad}) ->
    io:format("{\"calls\":~b,\"secs\":~f,\"p50_us\":~f,\"p99_us\":~f,\"all_calls\":~b,"
              "\"cpu_s\":~f,\"worker_cpu_s\":~f,\"bad\":~b}~n",
              [Calls, Secs, float(P50), float(P99), AllCalls, Cpu, WorkerCpu, Bad]).

%% --- workers -----------------------------------------------------------

start_worker(Python, App) ->
    Self = self(),
    Owner = spawn_link(fun() ->
        Port = open_port({spawn_executable, Python},
                         [{args, ["-m", "portpool", App]}, {packet, 4}, binary, exit_status]),
        {os_pid, OsPid} = erlang:port_info(Port, os_pid),
        receive
            {Port, {data, Hello}} ->
                {#{<<"type">> := <<"hello">>}, _} = decode(Hello)
        after 30000 ->
            exit(no_hello)
        end,
        Self ! {started, self(), OsPid},
        owner(Port, 1, #{})
    end),
    receive {started, Owner, OsPid} -> {Owner, OsPid} end.

%% The port's owner: requests out, replies routed to their callers by id.
owner(Port, Next, Pending) ->
    receive
        {call, From, Params} ->
            port_command(Port, [request_head(Next), Params]),
            owner(Port, Next + 1, Pending#{Next => From});
        {Port, {data, Reply}} ->
            {#{<<"id">> := Id} = Message, <<>>} = decode(Reply),
            {From, Rest} = maps:take(Id, Pending),
            From ! {reply, maps:get(<<"result">>, Message, error)},
            owner(Port, Next, Rest);
        {Port, {exit_status, Status}} ->
            exit({worker_exited, Status})
    end.

request_head(Id) ->
    [<<16#84, 16#a4, "type", 16#a7, "request", 16#a2, "id">>, uint(Id),
     <<16#a6, "method", 16#a4, "echo", 16#a6, "params">>].

uint(N) when N < 128 -> <<N>>;
uint(N) when N < 16#100 -> <<16#cc, N>>;
uint(N) when N < 16#10000 -> <<16#cd, N:16>>;
uint(N) when N < 16#100000000 -> <<16#ce, N:32>>;
uint(N) -> <<16#cf, N:64>>.

call(Owner, Params) ->
    Owner ! {call, self(), Params},
    receive {reply, Result} -> Result end.

%% --- measurements --------------------------------------------------------

sequential(Owner, Params, Expected, Ms) ->
    Cpu0 = cpu_s(),
    [call(Owner, Params) || _ <- lists:seq(1, 50)],
    Start = now_us(),
    {Samples, Bad} = seq_loop(Owner, Params, Expected, Start + Ms * 1000, [], 0),
    Secs = (now_us() - Start) / 1.0e6,
    Cpu = since(cpu_s(), Cpu0),
    Sorted = lists:sort(Samples),
    {length(Sorted), Secs, quantile(Sorted, 0.5), quantile(Sorted, 0.99), length(Sorted) + 50, Cpu, Bad}.

seq_loop(Owner, Params, Expected, Until, Samples, Bad) ->
    T0 = now_us(),
    Result = call(Owner, Params),
    T1 = now_us(),
    Bad1 = Bad + bad(Result, Expected),
    case T1 >= Until of
        true -> {[T1 - T0 | Samples], Bad1};
        false -> seq_loop(Owner, Params, Expected, Until, [T1 - T0 | Samples], Bad1)
    end.

concurrent(Mode, Owners, Params, Expected, Callers, WarmMs, Ms) ->
    Pool = case Mode of
        checkout -> spawn_link(fun() -> pool(Owners, queue:new()) end);
        mux -> none
    end,
    Now = now_us(),
    From = Now + WarmMs * 1000,
    Until = From + Ms * 1000,
    Me = self(),
    Cpu0 = cpu_s(),
    N = length(Owners),
    [spawn_link(fun() ->
         Pick = case Mode of
             mux -> Owner = lists:nth(I rem N + 1, Owners), fun() -> call(Owner, Params) end;
             checkout -> fun() -> checked_out_call(Pool, Params) end
         end,
         Me ! {done, caller_loop(Pick, Expected, From, Until, {0, 0, 0})}
     end) || I <- lists:seq(0, Callers - 1)],
    {Calls, All, Bad} = lists:foldl(
        fun(_, {C, A, B}) -> receive {done, {C1, A1, B1}} -> {C + C1, A + A1, B + B1} end end,
        {0, 0, 0}, lists:seq(1, Callers)),
    Cpu = since(cpu_s(), Cpu0),
    case Pool of none -> ok; _ -> unlink(Pool), exit(Pool, kill) end,
    {Calls, Ms / 1000, 0, 0, All, Cpu, Bad}.

%% Calls until `Until`; those ending after `From` are counted (all of them
%% in the second figure).
caller_loop(Call, Expected, From, Until, {Calls, All, Bad}) ->
    Result = Call(),
    T = now_us(),
    Counted = if T >= From -> 1; true -> 0 end,
    Totals = {Calls + Counted, All + 1, Bad + bad(Result, Expected)},
    case T >= Until of
        true -> Totals;
        false -> caller_loop(Call, Expected, From, Until, Totals)
    end.

%% Exclusive checkout, NimblePool's model: one call per worker at a time,
%% callers queue (FIFO) for the next free worker.
pool(Idle, Waiting) ->
    receive
        {checkout, Caller} ->
            case Idle of
                [Owner | Rest] -> Caller ! {worker, Owner}, pool(Rest, Waiting);
                [] -> pool([], queue:in(Caller, Waiting))
            end;
        {checkin, Owner} ->
            case queue:out(Waiting) of
                {{value, Caller}, Queue} -> Caller ! {worker, Owner}, pool(Idle, Queue);
                {empty, Queue} -> pool([Owner | Idle], Queue)
            end
    end.

checked_out_call(Pool, Params) ->
    Pool ! {checkout, self()},
    Owner = receive {worker, O} -> O end,
    Result = call(Owner, Params),
    Pool ! {checkin, Owner},
    Result.

since({Host, Workers}, {Host0, Workers0}) -> {Host - Host0, Workers - Workers0}.

bad(Expected, Expected) -> 0;
bad(_, _) -> 1.

quantile([], _) -> 0;
quantile(Sorted, Q) -> lists:nth(max(1, min(length(Sorted), round(Q * length(Sorted)))), Sorted).

now_us() -> erlang:monotonic_time(microsecond).

%% CPU seconds so far: this emulator's (every thread) and its workers'.
cpu_s() ->
    {proc_cpu_s("self"), lists:sum([proc_cpu_s(integer_to_list(P)) || P <- get(os_pids)])}.

%% A process's CPU seconds (every thread), from /proc/PID/stat.
proc_cpu_s(Pid) ->
    {ok, Stat} = file:read_file("/proc/" ++ Pid ++ "/stat"),
    %% Fields are counted after the name's last ')': state, ppid, ... utime
    %% and stime are the 12th and 13th there (ticks of 1/100 s).
    {Paren, _} = lists:last(binary:matches(Stat, <<")">>)),
    Rest = binary:part(Stat, Paren + 2, byte_size(Stat) - Paren - 2),
    Fields = binary:split(Rest, <<" ">>, [global]),
    (binary_to_integer(lists:nth(12, Fields)) + binary_to_integer(lists:nth(13, Fields))) / 100.

%% --- MessagePack (what the runtime sends: maps, strings, numbers, ...) ---

decode(<<N, R/binary>>) when N < 16#80 -> {N, R};
decode(<<2#1000:4, N:4, R/binary>>) -> map(N, R, #{});
decode(<<2#1001:4, N:4, R/binary>>) -> array(N, R, []);
decode(<<2#101:3, N:5, S:N/binary, R/binary>>) -> {S, R};
decode(<<16#c0, R/binary>>) -> {nil, R};
decode(<<16#c2, R/binary>>) -> {false, R};
decode(<<16#c3, R/binary>>) -> {true, R};
decode(<<16#c4, N, S:N/binary, R/binary>>) -> {{bin, S}, R};
decode(<<16#c5, N:16, S:N/binary, R/binary>>) -> {{bin, S}, R};
decode(<<16#c6, N:32, S:N/binary, R/binary>>) -> {{bin, S}, R};
decode(<<16#ca, F:32/float, R/binary>>) -> {F, R};
decode(<<16#cb, F:64/float, R/binary>>) -> {F, R};
decode(<<16#cc, N, R/binary>>) -> {N, R};
decode(<<16#cd, N:16, R/binary>>) -> {N, R};
decode(<<16#ce, N:32, R/binary>>) -> {N, R};
decode(<<16#cf, N:64, R/binary>>) -> {N, R};
decode(<<16#d0, N:8/signed, R/binary>>) -> {N, R};
decode(<<16#d1, N:16/signed, R/binary>>) -> {N, R};
decode(<<16#d2, N:32/signed, R/binary>>) -> {N, R};
decode(<<16#d3, N:64/signed, R/binary>>) -> {N, R};
decode(<<16#d9, N, S:N/binary, R/binary>>) -> {S, R};
decode(<<16#da, N:16, S:N/binary, R/binary>>) -> {S, R};
decode(<<16#db, N:32, S:N/binary, R/binary>>) -> {S, R};
decode(<<16#dc, N:16, R/binary>>) -> array(N, R, []);
decode(<<16#dd, N:32, R/binary>>) -> array(N, R, []);
decode(<<16#de, N:16, R/binary>>) -> map(N, R, #{});
decode(<<16#df, N:32, R/binary>>) -> map(N, R, #{});
decode(<<2#111:3, N:5, R/binary>>) -> {N - 32, R}.

array(0, R, Acc) -> {lists:reverse(Acc), R};
array(N, R, Acc) -> {V, R1} = decode(R), array(N - 1, R1, [V | Acc]).

map(0, R, Acc) -> {Acc, R};
map(N, R, Acc) ->
    {K, R1} = decode(R),
    {V, R2} = decode(R1),
    map(N - 1, R2, Acc#{K => V}).
